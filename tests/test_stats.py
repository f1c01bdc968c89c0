"""Exact binomial tests, decision thresholds and intervals in arena.stats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from arena.core.stats import (
    Evidence,
    beta_parameters,
    binomial_p_value,
    clopper_pearson,
    fit_beta_binomial,
    min_successes,
    null_p_value,
)
from arena.util.errors import ArenaError


def explicit_upper_tail(successes: int, trials: int, null_p: float) -> float:
    return float(
        sum(scipy_stats.binom.pmf(k, trials, null_p) for k in range(successes, trials + 1))
    )


@pytest.mark.parametrize(
    ("successes", "trials", "null_p"),
    [(1, 1, 0.5), (3, 10, 0.1), (7, 20, 0.1), (50, 100, 0.5), (97, 100, 0.1), (20, 20, 0.25)],
)
def test_p_value_is_the_exact_upper_tail(successes: int, trials: int, null_p: float) -> None:
    expected = explicit_upper_tail(successes, trials, null_p)
    assert binomial_p_value(successes, trials, null_p) == pytest.approx(
        expected, rel=1e-9, abs=1e-300
    )


@pytest.mark.parametrize(("trials", "null_p"), [(1, 0.5), (10, 0.1), (100, 0.9)])
def test_p_value_is_one_without_successes(trials: int, null_p: float) -> None:
    assert binomial_p_value(0, trials, null_p) == pytest.approx(1.0)


def test_p_value_is_scipys_exact_test_to_the_bit() -> None:
    # The incomplete beta function is what scipy's binomtest computes: recorded p-values
    # do not change with the function that computes them.
    for trials in (1, 2, 5, 20, 100, 256, 1000):
        for null_p in (0.01, 0.1, 0.5, 1 / 3, 0.9):
            for successes in range(0, trials + 1, max(1, trials // 40)):
                expected = scipy_stats.binomtest(
                    successes, trials, null_p, alternative="greater"
                ).pvalue
                assert binomial_p_value(successes, trials, null_p) == expected, (
                    successes,
                    trials,
                    null_p,
                )


def test_p_value_decreases_with_successes() -> None:
    values = [binomial_p_value(k, 30, 0.1) for k in range(31)]
    assert all(later < earlier for earlier, later in zip(values, values[1:]))


@pytest.mark.parametrize("trials", [5, 10, 20, 50, 100])
@pytest.mark.parametrize("null_p", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("alpha", [0.05, 1e-3])
def test_min_successes_is_the_exact_boundary(trials: int, null_p: float, alpha: float) -> None:
    k = min_successes(trials, null_p, alpha)
    if k is None:
        assert binomial_p_value(trials, trials, null_p) > alpha
        return
    assert 0 < k <= trials
    assert binomial_p_value(k, trials, null_p) <= alpha
    assert binomial_p_value(k - 1, trials, null_p) > alpha


def test_min_successes_known_value() -> None:
    # P[X >= 10] for Binomial(10, 0.5) is 1/1024 <= 0.001; P[X >= 9] = 11/1024 is not.
    assert min_successes(10, 0.5, 1e-3) == 10
    assert min_successes(10, 0.5, 9e-4) is None


@pytest.mark.parametrize(
    ("trials", "null_p", "alpha"), [(2, 0.5, 1e-3), (1, 0.1, 0.05), (0, 0.1, 0.05)]
)
def test_min_successes_is_none_when_impossible(trials: int, null_p: float, alpha: float) -> None:
    assert min_successes(trials, null_p, alpha) is None


def test_clopper_pearson_known_values() -> None:
    low, high = clopper_pearson(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.3085, abs=1e-4)
    low, high = clopper_pearson(10, 10)
    assert low == pytest.approx(1 - 0.3085, abs=1e-4)
    assert high == 1.0
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.1871, abs=1e-4)
    assert high == pytest.approx(0.8129, abs=1e-4)


def test_clopper_pearson_equals_beta_quantiles_and_widens_with_confidence() -> None:
    low, high = clopper_pearson(30, 100, confidence=0.95)
    assert low == pytest.approx(scipy_stats.beta.ppf(0.025, 30, 71), rel=1e-6)
    assert high == pytest.approx(scipy_stats.beta.ppf(0.975, 31, 70), rel=1e-6)
    wide_low, wide_high = clopper_pearson(30, 100, confidence=0.99)
    assert wide_low < low < 0.3 < high < wide_high


def test_clopper_pearson_is_scipys_exact_interval() -> None:
    # scipy finds the same quantiles by a root search that stops near 1e-12.
    for trials in (1, 2, 10, 100, 1000):
        for successes in range(0, trials + 1, max(1, trials // 25)):
            for confidence in (0.95, 0.98):
                expected = scipy_stats.binomtest(successes, trials).proportion_ci(
                    confidence_level=confidence, method="exact"
                )
                low, high = clopper_pearson(successes, trials, confidence)
                assert low == pytest.approx(expected.low, abs=2e-12)
                assert high == pytest.approx(expected.high, abs=2e-12)


@pytest.mark.parametrize(
    ("successes", "trials", "null_p", "alpha"),
    [
        (97, 100, 0.1, 1e-3),
        (3, 100, 0.1, 1e-3),
        (10, 10, 0.5, 1e-3),
        (9, 10, 0.5, 1e-3),
        (5, 20, 0.1, 0.05),
        (4, 20, 0.1, 0.05),
    ],
)
def test_evidence_verified_iff_p_value_at_most_alpha(
    successes: int, trials: int, null_p: float, alpha: float
) -> None:
    evidence = Evidence(successes, trials, null_p, alpha)
    p_value = binomial_p_value(successes, trials, null_p)
    assert evidence.p_value == p_value
    assert evidence.verified is (p_value <= alpha)


def test_evidence_verdicts_on_both_sides() -> None:
    assert Evidence(97, 100, 0.1, 1e-3).verified
    assert not Evidence(3, 100, 0.1, 1e-3).verified
    # 10 of 10 at p0 = 0.5 has p-value exactly 1/1024: verified at 1e-3, not at 9e-4.
    assert Evidence(10, 10, 0.5, 1e-3).verified
    assert not Evidence(10, 10, 0.5, 9e-4).verified


def test_evidence_round_trips_through_a_dict() -> None:
    evidence = Evidence(42, 100, 0.125, 0.01)
    record = evidence.to_dict()
    assert record["successes"] == 42 and record["trials"] == 100
    assert record["null_p"] == 0.125 and record["alpha"] == 0.01
    assert record["p_value"] == evidence.p_value
    assert record["verified"] is evidence.verified
    assert Evidence.from_dict(record) == evidence
    # Values read back from JSON or SQLite may be strings or floats.
    loose = {"successes": "42", "trials": 100.0, "null_p": "0.125", "alpha": "0.01"}
    assert Evidence.from_dict(loose) == evidence


def test_evidence_derived_values() -> None:
    evidence = Evidence(17, 20, 0.1, 1e-3)
    assert evidence.agreement == pytest.approx(0.85)
    assert evidence.required_successes == min_successes(20, 0.1, 1e-3)
    assert "17/20" in evidence.summary() and "verified" in evidence.summary()
    assert "not verified" in Evidence(1, 20, 0.1, 1e-3).summary()


@pytest.mark.parametrize(
    ("successes", "trials", "null_p"),
    [(11, 10, 0.1), (-1, 10, 0.1), (0, -1, 0.1), (5, 10, 0.0), (5, 10, 1.0), (5, 10, 1.5)],
)
def test_invalid_p_value_inputs_raise(successes: int, trials: int, null_p: float) -> None:
    with pytest.raises(ArenaError):
        binomial_p_value(successes, trials, null_p)


@pytest.mark.parametrize(
    ("successes", "trials", "null_p", "alpha"),
    [
        (11, 10, 0.1, 0.01),
        (5, 10, 0.0, 0.01),
        (5, 10, 1.0, 0.01),
        (5, 10, 0.1, 0.0),
        (5, 10, 0.1, 1.0),
    ],
)
def test_invalid_evidence_raises(successes: int, trials: int, null_p: float, alpha: float) -> None:
    with pytest.raises(ArenaError):
        Evidence(successes, trials, null_p, alpha)


def test_invalid_threshold_and_interval_inputs_raise() -> None:
    with pytest.raises(ArenaError, match="null_p"):
        min_successes(10, 1.0, 0.01)
    with pytest.raises(ArenaError, match="alpha"):
        min_successes(10, 0.1, 0.0)
    with pytest.raises(ArenaError):
        clopper_pearson(11, 10)
    with pytest.raises(ArenaError, match="confidence"):
        clopper_pearson(1, 10, confidence=1.0)


# --- the beta-binomial null -------------------------------------------------------------


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (3, 10), (21, 100), (100, 100)])
@pytest.mark.parametrize(("mean", "dispersion"), [(0.1, 0.05), (0.02, 0.3), (0.5, 0.01)])
def test_beta_binomial_p_value_is_the_exact_upper_tail(successes, trials, mean, dispersion):
    a, b = beta_parameters(mean, dispersion)
    expected = float(
        sum(scipy_stats.betabinom.pmf(k, trials, a, b) for k in range(successes, trials + 1))
    )
    assert null_p_value(successes, trials, mean, dispersion) == pytest.approx(
        expected, rel=1e-9, abs=1e-300
    )


def test_dispersion_zero_is_the_binomial_and_dispersion_only_fattens_the_tail():
    assert null_p_value(21, 100, 0.1, 0.0) == binomial_p_value(21, 100, 0.1)
    tails = [null_p_value(30, 100, 0.1, rho) for rho in (0.0, 0.01, 0.05, 0.2)]
    assert all(later > earlier for earlier, later in zip(tails, tails[1:]))


def test_evidence_with_dispersion_uses_the_beta_binomial_and_round_trips():
    evidence = Evidence(30, 100, 0.1, 1e-3, null_dispersion=0.05)
    assert evidence.p_value == pytest.approx(null_p_value(30, 100, 0.1, 0.05))
    assert not evidence.verified  # 30/100 verifies at the binomial 0.1, not here
    assert Evidence(30, 100, 0.1, 1e-3).verified
    assert Evidence.from_dict(evidence.to_dict()) == evidence
    k = evidence.required_successes
    assert null_p_value(k, 100, 0.1, 0.05) <= 1e-3 < null_p_value(k - 1, 100, 0.1, 0.05)
    with pytest.raises(ArenaError, match="null_dispersion"):
        Evidence(1, 10, 0.1, 0.01, null_dispersion=1.0)


@pytest.mark.parametrize(("a", "b"), [(0.5, 20.0), (5.0, 5.0), (2.0, 30.0)])
def test_the_fit_recovers_a_known_beta_binomial(a, b):
    rng = np.random.default_rng(0)
    counts = [(int(k), 100) for k in rng.binomial(100, rng.beta(a, b, size=2000))]
    fit = fit_beta_binomial(counts)
    assert fit.mean == pytest.approx(a / (a + b), rel=0.12)
    assert fit.dispersion == pytest.approx(1 / (a + b + 1), rel=0.25)
    assert fit.smallest_p_value(100) == pytest.approx(
        null_p_value(100, 100, fit.mean, fit.dispersion)
    )


def test_counts_that_are_all_zero_never_make_one_agreement_significant():
    fit = fit_beta_binomial([(0, 100)] * 1000)
    assert null_p_value(1, 100, fit.mean, fit.dispersion) > 1e-3
    with pytest.raises(ArenaError, match="at least one"):
        fit_beta_binomial([])
