"""Trigger reverse-engineering, shared by the removal attacks that reconstruct backdoor
triggers: Neural Cleanse (Wang et al., IEEE S&P 2019), which flags and unlearns them, and
laundering (Aiken et al., Computers & Security 2021), which resets the neurons they excite.

For every class, Adam fits a mask ``m`` (1, H, W) and a pattern ``p`` (C, H, W), both
tanh-parametrised into [0, 1], so that ``(1 - m) * x + m * p`` on the attacker's clean
images is classified as that class, with an L1 penalty on ``m``: the smallest change that
sends any image to the class, which for a backdoor's target is the trigger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.params import param
from arena.core.training import predict

MAD_CONSISTENCY = 1.4826  # makes the MAD estimate the standard deviation of normal data


@dataclass(frozen=True)
class TriggerReversal:
    """The reversal's optimizer and budget (Neural Cleanse's; attacks add their own fields)."""

    steps: int = param(150, help="Adam steps reversing the triggers (all classes at once)", min=1)
    batch_size: int = param(16, help="attacker images per class and reversal step", min=1)
    lr: float = param(0.2, help="Adam's learning rate, for masks and patterns", above=0)
    l1_weight: float = param(0.05, help="weight of a mask's L1 norm in its reversal loss", min=0)


def reverse_triggers(
    model: nn.Module,
    images: torch.Tensor,
    num_classes: int,
    params: TriggerReversal,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every class, the smallest mask (1, H, W) and its pattern (C, H, W) that send
    ``images`` to that class: masks (K, 1, H, W) and patterns (K, C, H, W).

    The classes are independent problems solved in one batch (one forward pass over every
    class's stamped copy of the images), which is many times faster for small models.
    """
    channels, height, width = images.shape[1:]
    # Start from a small mask (0.1 everywhere): the minimal triggers are small.
    mask_logit = torch.full((num_classes, 1, height, width), -1.1, device=device)
    pattern_logit = torch.zeros(num_classes, channels, height, width, device=device)
    mask_logit.requires_grad_()
    pattern_logit.requires_grad_()
    optimizer = torch.optim.Adam([mask_logit, pattern_logit], lr=params.lr, betas=(0.5, 0.9))
    targets = torch.arange(num_classes, device=device).repeat_interleave(params.batch_size)
    model.to(device).eval()
    model.requires_grad_(False)  # only the triggers are optimised
    try:
        for _ in range(params.steps):
            rows = torch.randint(len(images), (params.batch_size,), generator=generator)
            batch = images[rows].to(device).unsqueeze(0)
            masks, patterns = _squash(mask_logit), _squash(pattern_logit)
            stamped = (1 - masks.unsqueeze(1)) * batch + (masks * patterns).unsqueeze(1)
            logits = model(stamped.flatten(0, 1))
            # Summed over classes, so each class's trigger sees its own mean loss.
            loss = F.cross_entropy(logits, targets) * num_classes
            loss = loss + params.l1_weight * masks.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        model.requires_grad_(True)
    return _squash(mask_logit).detach().cpu(), _squash(pattern_logit).detach().cpu()


def stamp(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """``images`` with one reversed trigger (``mask`` (1, H, W), ``pattern`` (C, H, W))."""
    return (1 - mask) * images + mask * pattern


def trigger_success(
    model: nn.Module, images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor, target: int
) -> float:
    """How often the reversed trigger sends ``images`` to ``target``: a mask only counts
    as small if it works."""
    device = next(model.parameters()).device
    answers = predict(model, stamp(images, mask, pattern), device)
    return float((answers == target).float().mean())


def anomaly_indices(norms: Sequence[float]) -> list[float]:
    """Each norm's distance from the median in units of the consistent MAD estimate."""
    values = np.asarray(norms, dtype=np.float64)
    deviations = np.abs(values - np.median(values))
    mad = MAD_CONSISTENCY * np.median(deviations)
    # All norms equal but one: any deviation is infinitely anomalous; keep it finite for JSON.
    return (deviations / max(mad, 1e-12)).tolist()


def _squash(logit: torch.Tensor) -> torch.Tensor:
    return torch.tanh(logit) / 2 + 0.5
