"""Ownership piracy: the attacker implants its own mark and claims the stolen model."""
