"""Watermarking schemes (defenses), one module each; they register themselves."""
