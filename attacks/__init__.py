"""Attacks, one module each, grouped by threat; they register themselves."""
