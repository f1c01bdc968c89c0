"""Randomized smoothing over weights: the certificate's radii, its guarantee against the
worst weight change within them, and the weight change an attack is measured by."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from arena.core.smoothing import certify, median_upper_bound, noisy_agreement, weight_change

CPU = torch.device("cpu")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _key(seed: int = 0, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 8, generator=generator), torch.randint(
        0, 4, (size,), generator=generator
    )


def _fit(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """The key learnt with a wide margin, so that noise of sigma 0.05 rarely flips it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(400):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs) * 3, labels).backward()
        optimizer.step()
    return model.eval()


def _certificate(model, inputs, labels, sigma, samples, seed, confidence=0.99):
    return certify(
        model,
        inputs,
        labels,
        sigma=sigma,
        samples=samples,
        confidence=confidence,
        generator=torch.Generator().manual_seed(seed),
        device=CPU,
    )


def test_the_certified_count_is_an_order_statistic_of_the_copies():
    inputs, labels = _key()
    model = _fit(_model(), inputs, labels)
    sigma, samples, confidence = 0.05, 300, 0.99
    certificate = _certificate(model, inputs, labels, sigma, samples, 1, confidence)
    counts = noisy_agreement(
        model, inputs, labels, sigma, samples, torch.Generator().manual_seed(1), CPU
    )
    assert sum(certificate.histogram) == samples and len(certificate.histogram) == len(inputs) + 1
    ordered = sorted(counts.tolist())
    for radius in (0.0, 0.01, 0.05, 0.1):
        percentile = stats.norm.cdf(-radius / sigma)
        ranks = [
            k
            for k in range(1, samples + 1)
            if stats.binom.sf(k - 1, samples, percentile) >= confidence
        ]
        expected = ordered[max(ranks) - 1] if ranks else 0
        assert certificate.certified(radius) == expected
    # Wider changes certify less; at radius 0 about the median copy's count.
    values = [certificate.certified(r) for r in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert values == sorted(values, reverse=True) and values[0] > len(inputs) // 2
    assert certificate.certified(10.0) == 0


def test_the_median_upper_bound_is_an_order_statistic_above_the_median():
    counts = torch.arange(101)  # a median of 50
    bound = median_upper_bound(counts, 0.99)
    ranks = [j for j in range(1, 102) if stats.binom.sf(j - 1, 101, 0.5) <= 0.01]
    assert bound == min(ranks) - 1 and 50 < bound < 70


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_worst_weight_change_within_a_radius_never_breaks_the_certificate(seed):
    """The issue's check: an attack within the certified radius that leaves fewer key
    inputs than certified would be a bug. The attack here is the strongest first-order
    one: every parameter moved up the key's loss, by a norm where the certificate still
    promises more than half the key."""
    inputs, labels = _key(seed)
    model = _fit(_model(seed), inputs, labels)
    sigma = 0.05
    certificate = _certificate(model, inputs, labels, sigma, 500, seed + 10)
    budget = next(
        r for r in (0.06, 0.04, 0.02, 0.01) if certificate.certified(r) > len(inputs) // 2
    )
    attacked = _model(seed)
    attacked.load_state_dict(model.state_dict())
    loss = nn.functional.cross_entropy(attacked(inputs), labels)
    gradients = torch.autograd.grad(loss, list(attacked.parameters()))
    norm = torch.sqrt(sum(g.square().sum() for g in gradients))
    with torch.no_grad():
        for parameter, gradient in zip(attacked.parameters(), gradients, strict=True):
            parameter += budget * gradient / norm  # uphill on the key's loss
    change = weight_change(model, attacked)
    assert change is not None and math.isclose(change.l2, budget, rel_tol=1e-4)
    counts = noisy_agreement(
        attacked, inputs, labels, sigma, 500, torch.Generator().manual_seed(seed + 20), CPU
    )
    # The attacked model's median count stays at or above what was certified (its upper
    # confidence bound, so that the noise of 500 copies cannot fail the test).
    assert median_upper_bound(counts, 0.99) >= certificate.certified(budget)
    # And the attack did something: the plain model lost key inputs.
    assert int((attacked(inputs).argmax(1) == labels).sum()) <= int(
        (model(inputs).argmax(1) == labels).sum()
    )


def test_weight_change_measures_parameters_and_notices_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    same = weight_change(model, model)
    assert same is not None and same.l2 == 0 and not same.buffers_changed
    moved = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved[0].weight[0, 0] += 3.0
        moved[0].bias[1] -= 4.0
    change = weight_change(model, moved)
    norm = math.sqrt(sum(float(p.detach().double().square().sum()) for p in model.parameters()))
    assert math.isclose(change.l2, 5.0, rel_tol=1e-6)  # float32 weights
    assert math.isclose(change.relative, change.l2 / norm, rel_tol=1e-9)
    assert math.isclose(change.max_abs, 4.0, rel_tol=1e-6)
    assert change.parameters == 3 * 4 + 4 + 4 + 4 and not change.buffers_changed
    moved.train()
    moved(torch.randn(5, 3))  # BatchNorm's running statistics move
    assert weight_change(model, moved).buffers_changed
    assert weight_change(model, nn.Sequential(nn.Linear(3, 5))) is None  # no common weights
