"""Errors the arena reports to a user as one clear line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ArenaError(Exception):
    """A problem with the user's input or files; the CLI prints it on one line and exits 2."""


class UnknownNameError(ArenaError):
    """A plugin, protocol or parameter name that does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        known = sorted(known)
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif known:
            message += f"; known: {', '.join(known)}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class KeyTamperedError(ArenaError):
    """A key file whose commitments do not open, or that does not parse."""


class ArtifactError(ArenaError):
    """A model or metadata file that is missing, corrupt or does not match its record."""
