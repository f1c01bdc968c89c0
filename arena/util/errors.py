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
        close = _closest(name, known)
        if close:
            message += f"; did you mean {close!r}?"
        elif known:
            message += f"; known: {', '.join(known)}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


def _closest(name: str, known: list[str]) -> str | None:
    """The most similar known name; on a tie, the one sharing the most letters.

    difflib alone breaks ties alphabetically, so 'rtla' would suggest 'rtll'; preferring
    the same letters makes a swapped pair suggest the intended 'rtal'.
    """
    close = difflib.get_close_matches(name, known, n=len(known) or 1, cutoff=0.5)

    def similarity(candidate: str) -> tuple[float, float]:
        matcher = difflib.SequenceMatcher(None, name, candidate)
        return matcher.ratio(), matcher.quick_ratio()

    return max(close, key=similarity) if close else None


class KeyTamperedError(ArenaError):
    """A key file whose commitments do not open, or that does not parse."""


class ArtifactError(ArenaError):
    """A model or metadata file that is missing, corrupt or does not match its record."""
