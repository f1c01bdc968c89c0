"""Verification statistics: exact binomial tests, decision thresholds, intervals.

A black-box watermark is evidence of the form "k of n trigger inputs were answered
with their committed labels". Under the null hypothesis "this model was not marked
with this key" each answer matches with probability ``null_p``; the p-value is the
exact upper tail of Binomial(n, null_p) at k. The verdict is ``p_value <= alpha``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

from scipy import stats as _scipy_stats

from arena.errors import ArenaError


def binomial_p_value(successes: int, trials: int, null_p: float) -> float:
    """P[X >= successes] for X ~ Binomial(trials, null_p), by scipy's exact test."""
    _check_counts(successes, trials)
    _check_probability(null_p, "null_p")
    if trials == 0:
        return 1.0
    return float(_scipy_stats.binomtest(successes, trials, null_p, alternative="greater").pvalue)


def min_successes(trials: int, null_p: float, alpha: float) -> int | None:
    """The smallest k with P[X >= k] <= alpha, or None when no k of n suffices."""
    _check_probability(null_p, "null_p")
    _check_probability(alpha, "alpha")
    if trials <= 0:
        return None
    # P[X >= k] = sf(k - 1); isf gives the smallest x with sf(x) <= alpha.
    k = int(_scipy_stats.binom.isf(alpha, trials, null_p)) + 1
    # isf works in floating point: step to the exact boundary.
    while k > 0 and binomial_p_value(k - 1, trials, null_p) <= alpha:
        k -= 1
    while k <= trials and binomial_p_value(k, trials, null_p) > alpha:
        k += 1
    return k if k <= trials else None


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion."""
    _check_counts(successes, trials)
    _check_probability(confidence, "confidence")
    if trials == 0:
        return (0.0, 1.0)
    interval = _scipy_stats.binomtest(successes, trials).proportion_ci(
        confidence_level=confidence, method="exact"
    )
    return (float(interval.low), float(interval.high))


@dataclass(frozen=True)
class Evidence:
    """``successes`` of ``trials`` answers agreed with the key; chance agreement ``null_p``."""

    successes: int
    trials: int
    null_p: float
    alpha: float

    def __post_init__(self) -> None:
        _check_counts(self.successes, self.trials)
        _check_probability(self.null_p, "null_p")
        _check_probability(self.alpha, "alpha")

    @cached_property
    def p_value(self) -> float:
        return binomial_p_value(self.successes, self.trials, self.null_p)

    @property
    def verified(self) -> bool:
        return self.p_value <= self.alpha

    @property
    def agreement(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    @property
    def required_successes(self) -> int | None:
        return min_successes(self.trials, self.null_p, self.alpha)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["p_value"] = self.p_value
        record["verified"] = self.verified
        record["required_successes"] = self.required_successes
        return record

    @classmethod
    def from_dict(cls, record: dict) -> Evidence:
        return cls(
            successes=int(record["successes"]),
            trials=int(record["trials"]),
            null_p=float(record["null_p"]),
            alpha=float(record["alpha"]),
        )

    def summary(self) -> str:
        verdict = "verified" if self.verified else "not verified"
        return (
            f"{self.successes}/{self.trials} (null p {self.null_p:.3g}, "
            f"p-value {self.p_value:.2e}, alpha {self.alpha:g}): {verdict}"
        )


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or successes < 0 or successes > trials:
        raise ArenaError(f"invalid evidence: {successes} successes of {trials} trials")


def _check_probability(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ArenaError(f"{name} must lie strictly between 0 and 1, got {value}")
