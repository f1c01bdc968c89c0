"""Randomized smoothing over weights: certificates that survive any small weight change,
and the weight change an attack made.

Let h(w) be how many key inputs the model of weights w answers with the key's answers,
and H(w) the random count h(w + e), e ~ N(0, sigma^2 I) over every parameter (buffers,
such as BatchNorm's running statistics, stay as they are). Percentile smoothing (Chiang
et al., NeurIPS 2020), which Bansal et al. (ICML 2022) use to certify watermarks: for any
weight change d with ||d||_2 <= r, the median of H(w + d) is at least the
Phi(-r / sigma) percentile of H(w). ``certify`` draws noisy copies of the marked model
and keeps the distribution of their counts; ``Certificate.certified(r)`` is then a lower
confidence bound (an order statistic) on that percentile: the count of key inputs the
median-smoothed model of any weights within r of the marked ones still answers.
``median_upper_bound`` is the check's other side: an upper confidence bound on the median
count of another model's noisy copies, below the certified count only if the certificate
is broken.

``weight_change`` measures how far an attack moved the weights, in the same space: the
l2 norm of the parameter difference, and whether the buffers changed (a certificate over
parameters says nothing about a model whose BatchNorm statistics moved).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _stats
from torch import nn
from torch.func import functional_call

from arena.core.environment import autocast


@dataclass(frozen=True)
class Certificate:
    """The marked model's noisy copies: ``histogram[k]`` of the ``samples`` copies (noise
    ``sigma`` on every parameter) answered exactly k key inputs with the key's answers.
    What it certifies holds with probability ``confidence`` over those copies."""

    sigma: float
    samples: int
    confidence: float
    histogram: tuple[int, ...]

    def certified(self, radius: float) -> int:
        """Key inputs the median-smoothed model of any weights within ``radius`` (l2, in
        parameter space) still answers: a lower confidence bound on the
        Phi(-radius / sigma) percentile of the copies' counts; 0 where none holds."""
        percentile = float(_stats.norm.cdf(-radius / self.sigma))
        # The k-th smallest count lies at or below that percentile with probability
        # P(Binomial(samples, percentile) >= k): the largest k where that is confident.
        ranks = np.arange(1, self.samples + 1)
        confident = _stats.binom.sf(ranks - 1, self.samples, percentile) >= self.confidence
        if not confident.any():
            return 0
        return _order_statistic(self.histogram, int(ranks[confident].max()))

    def to_dict(self) -> dict:
        return {
            "sigma": self.sigma,
            "samples": self.samples,
            "confidence": self.confidence,
            "histogram": list(self.histogram),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Certificate:
        return cls(
            sigma=float(data["sigma"]),
            samples=int(data["samples"]),
            confidence=float(data["confidence"]),
            histogram=tuple(int(count) for count in data["histogram"]),
        )


@dataclass(frozen=True)
class WeightChange:
    """How far one model's weights lie from another's of the same architecture."""

    l2: float  # ||w_attacked - w_marked||_2 over every parameter
    relative: float  # l2 / ||w_marked||_2
    max_abs: float  # the largest change of one parameter
    parameters: int  # how many numbers were compared
    buffers_changed: bool  # BatchNorm statistics and other buffers moved


def noisy_agreement(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    samples: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Per noisy copy of ``model`` (``samples`` of them, Gaussian noise of standard
    deviation ``sigma`` on every parameter), how many ``inputs`` it answers with their
    ``labels``."""
    model.eval()  # as every measurement queries a model
    model.to(device)
    inputs, labels = inputs.to(device), labels.to(device)
    parameters = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    counts = []
    with torch.no_grad(), autocast(device):
        for _ in range(samples):
            noisy = {
                name: value
                + sigma
                * torch.randn(value.shape, generator=generator, dtype=value.dtype).to(device)
                for name, value in parameters.items()
            }
            logits = functional_call(model, {**noisy, **buffers}, (inputs,))
            counts.append(int((logits.argmax(dim=1) == labels).sum()))
    return torch.tensor(counts, dtype=torch.long)


def certify(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    sigma: float,
    samples: int,
    confidence: float,
    generator: torch.Generator,
    device: torch.device,
) -> Certificate:
    """The distribution of ``samples`` noisy copies' counts on the key, as a certificate."""
    counts = noisy_agreement(model, inputs, labels, sigma, samples, generator, device)
    histogram = torch.bincount(counts, minlength=len(inputs) + 1)
    return Certificate(sigma, samples, confidence, tuple(histogram.tolist()))


def median_upper_bound(counts: torch.Tensor, confidence: float) -> int:
    """An upper confidence bound on the median of the distribution ``counts`` (one count
    per noisy copy) were drawn from: the smallest order statistic that lies at or above
    the median with probability ``confidence``."""
    samples = len(counts)
    ranks = np.arange(1, samples + 1)
    # The j-th smallest lies below the median with probability at most
    # P(Binomial(samples, 1/2) >= j).
    confident = _stats.binom.sf(ranks - 1, samples, 0.5) <= 1 - confidence
    histogram = torch.bincount(counts).tolist()
    if not confident.any():
        return len(histogram) - 1  # too few copies to bound it: the largest count seen
    return _order_statistic(tuple(histogram), int(ranks[confident].min()))


def _order_statistic(histogram: tuple[int, ...], rank: int) -> int:
    """The ``rank``-th smallest count (from 1) of the copies ``histogram`` describes."""
    seen = 0
    for count, copies in enumerate(histogram):
        seen += copies
        if seen >= rank:
            return count
    raise ValueError(f"rank {rank} beyond the {seen} copies")


def weight_change(reference: nn.Module, other: nn.Module) -> WeightChange | None:
    """How far ``other``'s weights lie from ``reference``'s, or None when the two models
    do not have the same parameters (another architecture, an ensemble)."""
    ours, theirs = dict(reference.named_parameters()), dict(other.named_parameters())
    if ours.keys() != theirs.keys() or any(ours[name].shape != theirs[name].shape for name in ours):
        return None
    squared, norm, largest, count = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for name, value in ours.items():
            difference = theirs[name].detach().double().cpu() - value.detach().double().cpu()
            squared += float(difference.square().sum())
            norm += float(value.detach().double().square().sum())
            largest = max(largest, float(difference.abs().max())) if difference.numel() else largest
            count += difference.numel()
        buffers = dict(reference.named_buffers())
        other_buffers = dict(other.named_buffers())
        moved = buffers.keys() != other_buffers.keys() or any(
            buffers[name].shape != other_buffers[name].shape
            or not torch.equal(buffers[name].cpu(), other_buffers[name].cpu())
            for name in buffers
        )
    l2 = squared**0.5
    return WeightChange(l2, l2 / norm**0.5 if norm else 0.0, largest, count, moved)
