"""The few numbers every report writes the same way: counts, percentages, evidence."""

from __future__ import annotations

from arena.core.registry import DISTRIBUTION
from arena.storage.record import EvidenceRecord


def k_of_n(k: int, n: int, *, words: bool = False) -> str:
    """``k/n`` (in tables), or ``k of n`` (in sentences and the match table)."""
    return f"{k} of {n}" if words else f"{k}/{n}"


def pct(value: float) -> str:
    """A share as a percentage with two decimals, without the sign: ``95.30``."""
    return f"{100 * value:.2f}"


def evidence_text(evidence: EvidenceRecord, unsound_null: str | None = None) -> str:
    """``99/100 (p 9.0e-98, verified)``; a null that is not sound gives no verdict."""
    verdict = "verified" if evidence.verified else "not verified"
    if unsound_null:
        verdict = f"no verdict, null {unsound_null}"
    return f"{k_of_n(evidence.successes, evidence.trials)} (p {evidence.p_value:.1e}, {verdict})"


def plugin_label(label: str, package: str | None) -> str:
    """A plugin's row label, naming the package that provided it unless it is the arena's
    own (or not known), so that two packages' plugins of one name are told apart."""
    if package is None or package == DISTRIBUTION:
        return label
    return f"{label} (from {package})"
