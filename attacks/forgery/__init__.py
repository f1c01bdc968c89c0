"""Forgery: claims of ownership with keys the attacker did not legitimately own."""
