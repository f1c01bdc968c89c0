"""Attacks, one module each, grouped by threat; they register themselves."""

import arena.core.chain  # noqa: F401,E402 (chains of these attacks: --attack a+b)
