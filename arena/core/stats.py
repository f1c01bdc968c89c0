"""Verification statistics: exact binomial and beta-binomial tests, thresholds, intervals.

A black-box watermark is evidence of the form "k of n trigger inputs were answered
with their committed labels". Under the null hypothesis "this model was not marked
with this key" the p-value is the upper tail at k of the distribution of k for models
never marked with the key:

- ``Binomial(n, null_p)`` when every answer matches with probability ``null_p`` whatever
  the model is: exact for labels (or bits) drawn uniformly and independently of every
  model, where ``null_p = 1/|L|`` (0.5 for bits);
- ``BetaBinomial(n, a, b)`` when the agreement rate varies from model to model (one
  shared target class, true labels): a clean model's rate is a draw from
  ``Beta(a, b)``, fitted to clean reference models (``fit_beta_binomial``). It is
  parametrised by its mean ``null_p`` and its intra-class correlation
  ``null_dispersion`` = 1 / (a + b + 1); dispersion 0 is the binomial.

The verdict is ``p_value <= alpha``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from arena.util.errors import ArenaError

# scipy is imported where it is used: 0.6 s that a command computing no p-value (a refusal
# of bad input, a keygen, a listing) does not pay.


def binomial_p_value(successes: int, trials: int, null_p: float) -> float:
    """P[X >= successes] for X ~ Binomial(trials, null_p): the exact upper tail, the
    regularized incomplete beta function I_p(k, n - k + 1).

    It is what ``scipy.stats.binomtest(k, n, p, alternative="greater")`` returns, to the
    bit (tested), from ``scipy.special`` alone: 0.08 s to import against 0.48 s for
    ``scipy.stats``, which a smoke match would otherwise spend on its one verdict.
    """
    from scipy import special as _scipy_special

    _check_counts(successes, trials)
    _check_probability(null_p, "null_p")
    if trials == 0 or successes == 0:
        return 1.0
    return float(_scipy_special.betainc(successes, trials - successes + 1, null_p))


def beta_binomial_p_value(successes: int, trials: int, mean: float, dispersion: float) -> float:
    """P[X >= successes] for X ~ BetaBinomial(trials, a, b) of ``mean`` a / (a + b) and
    intra-class correlation ``dispersion`` 1 / (a + b + 1); dispersion 0 is the binomial."""
    _check_counts(successes, trials)
    _check_probability(mean, "null_p")
    _check_dispersion(dispersion)
    if dispersion == 0.0:
        return binomial_p_value(successes, trials, mean)
    if trials == 0 or successes == 0:
        return 1.0
    from scipy import special as _scipy_special
    from scipy import stats as _scipy_stats

    a, b = beta_parameters(mean, dispersion)
    # Summing the pmf of the tail keeps precision far below 1e-16, where sf would round.
    tail = _scipy_stats.betabinom.logpmf(np.arange(successes, trials + 1), trials, a, b)
    return float(min(1.0, np.exp(_scipy_special.logsumexp(tail))))


def null_p_value(successes: int, trials: int, null_p: float, dispersion: float = 0.0) -> float:
    """The upper tail at ``successes`` of the null: binomial, or beta-binomial if dispersed."""
    return beta_binomial_p_value(successes, trials, null_p, dispersion)


def beta_parameters(mean: float, dispersion: float) -> tuple[float, float]:
    """(a, b) of the beta distribution with ``mean`` and intra-class correlation ``dispersion``."""
    concentration = (1.0 - dispersion) / dispersion  # a + b
    return mean * concentration, (1.0 - mean) * concentration


def min_successes(trials: int, null_p: float, alpha: float, dispersion: float = 0.0) -> int | None:
    """The smallest k with P[X >= k] <= alpha, or None when no k of n suffices."""
    _check_probability(null_p, "null_p")
    _check_probability(alpha, "alpha")
    if trials <= 0:
        return None
    if null_p_value(trials, trials, null_p, dispersion) > alpha:
        return None
    # The tail falls as k grows: bisect for the first k whose tail is <= alpha.
    low, high = 0, trials  # tail(low) > alpha (tail(0) = 1), tail(high) <= alpha
    while high - low > 1:
        middle = (low + high) // 2
        if null_p_value(middle, trials, null_p, dispersion) <= alpha:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class BetaBinomialFit:
    """A beta-binomial fitted by maximum likelihood to clean models' (k, n) counts."""

    mean: float
    dispersion: float
    counts: int  # how many (model, key) counts it was fitted to
    log_likelihood: float

    def smallest_p_value(self, trials: int) -> float:
        """P[X = n]: the smallest p-value this null gives a key of ``trials`` triggers."""
        return null_p_value(trials, trials, self.mean, self.dispersion)


# Bounds of the fit: a mean never exactly 0 or 1, a dispersion never exactly 0 (a
# binomial, which the counts cannot prove) nor 1.
_MEAN_BOUNDS = (1e-6, 1 - 1e-6)


_DISPERSION_BOUNDS = (1e-6, 1 - 1e-6)


def fit_beta_binomial(counts: list[tuple[int, int]]) -> BetaBinomialFit:
    """Maximum-likelihood beta-binomial of per-(model, key) ``(successes, trials)`` counts.

    The mean is then raised to at least the one-sided 99% Clopper-Pearson upper bound of
    the pooled rate over the *effective* number of trials, ``trials / (1 + (n - 1) rho)``
    (the design effect of the fitted intra-class correlation rho): counts that are all
    zero, or nearly, prove little about a model the fit never saw, and such a null must
    not make one agreement significant.
    """
    from scipy import optimize as _scipy_optimize
    from scipy import stats as _scipy_stats

    if not counts:
        raise ArenaError("fitting a null needs at least one (successes, trials) count")
    for successes, trials in counts:
        _check_counts(successes, trials)
    k = np.array([c[0] for c in counts], dtype=float)
    n = np.array([c[1] for c in counts], dtype=float)

    def negative_log_likelihood(theta: np.ndarray) -> float:
        mean = _squash(theta[0], _MEAN_BOUNDS)
        dispersion = _squash(theta[1], _DISPERSION_BOUNDS)
        a, b = beta_parameters(mean, dispersion)
        return -float(_scipy_stats.betabinom.logpmf(k, n, a, b).sum())

    rate = float(k.sum() / max(1.0, n.sum()))
    start = np.array(
        [
            _unsquash(min(max(rate, 1e-3), 1 - 1e-3), _MEAN_BOUNDS),
            _unsquash(0.05, _DISPERSION_BOUNDS),
        ]
    )
    best = _scipy_optimize.minimize(
        negative_log_likelihood,
        start,
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000},
    )
    mean = _squash(best.x[0], _MEAN_BOUNDS)
    dispersion = _squash(best.x[1], _DISPERSION_BOUNDS)
    design_effect = 1.0 + (float(n.mean()) - 1.0) * dispersion
    effective_trials = max(1, int(n.sum() / design_effect))
    effective_successes = min(effective_trials, round(rate * effective_trials))
    upper = clopper_pearson(effective_successes, effective_trials, confidence=0.98)[1]
    mean = max(mean, min(upper, _MEAN_BOUNDS[1]))
    a, b = beta_parameters(mean, dispersion)
    log_likelihood = float(_scipy_stats.betabinom.logpmf(k, n, a, b).sum())
    return BetaBinomialFit(mean, dispersion, len(counts), log_likelihood)


def _squash(value: float, bounds: tuple[float, float]) -> float:
    from scipy import special as _scipy_special

    low, high = bounds
    return low + (high - low) * float(_scipy_special.expit(value))


def _unsquash(value: float, bounds: tuple[float, float]) -> float:
    from scipy import special as _scipy_special

    low, high = bounds
    return float(_scipy_special.logit((value - low) / (high - low)))


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion: the (1 -
    confidence) / 2 quantile of Beta(k, n - k + 1) and the (1 + confidence) / 2 quantile of
    Beta(k + 1, n - k), by the inverse of the regularized incomplete beta function.

    The same interval as scipy's ``binomtest(k, n).proportion_ci(method="exact")``, which
    finds these quantiles by root search (to about 1e-12; tested), from ``scipy.special``
    alone (see ``binomial_p_value``).
    """
    from scipy import special as _scipy_special

    _check_counts(successes, trials)
    _check_probability(confidence, "confidence")
    if trials == 0:
        return (0.0, 1.0)
    tail = (1.0 - confidence) / 2.0
    failures = trials - successes
    low = 0.0 if successes == 0 else _scipy_special.betaincinv(successes, failures + 1, tail)
    high = 1.0 if failures == 0 else _scipy_special.betaincinv(successes + 1, failures, 1 - tail)
    return (float(low), float(high))


@dataclass(frozen=True)
class Evidence:
    """``successes`` of ``trials`` answers agreed with the key; chance agreement ``null_p``.

    ``null_dispersion`` > 0 makes the null a beta-binomial of mean ``null_p``: clean
    models differ in how often they agree with keys of this kind.
    """

    successes: int
    trials: int
    null_p: float
    alpha: float
    null_dispersion: float = 0.0

    def __post_init__(self) -> None:
        _check_counts(self.successes, self.trials)
        _check_probability(self.null_p, "null_p")
        _check_probability(self.alpha, "alpha")
        _check_dispersion(self.null_dispersion)

    @cached_property
    def p_value(self) -> float:
        return null_p_value(self.successes, self.trials, self.null_p, self.null_dispersion)

    @property
    def verified(self) -> bool:
        return self.p_value <= self.alpha

    @property
    def agreement(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    @property
    def required_successes(self) -> int | None:
        return min_successes(self.trials, self.null_p, self.alpha, self.null_dispersion)

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
            null_dispersion=float(record.get("null_dispersion", 0.0)),
        )

    def summary(self) -> str:
        verdict = "verified" if self.verified else "not verified"
        dispersed = f", dispersion {self.null_dispersion:.3g}" if self.null_dispersion else ""
        return (
            f"{self.successes}/{self.trials} (null p {self.null_p:.3g}{dispersed}, "
            f"p-value {self.p_value:.2e}, alpha {self.alpha:g}): {verdict}"
        )


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or successes < 0 or successes > trials:
        raise ArenaError(f"invalid evidence: {successes} successes of {trials} trials")


def _check_dispersion(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ArenaError(f"null_dispersion must lie in [0, 1), got {value}")


def _check_probability(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ArenaError(f"{name} must lie strictly between 0 and 1, got {value}")
