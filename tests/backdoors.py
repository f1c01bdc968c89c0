"""The BadNets-style backdoored smoke model that the removal and evasion tests attack:
owner images with a white square stamped near the lower right corner, relabelled to
``TARGET`` and mixed into every batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from arena.core.context import Context
from arena.core.training import train

TARGET = 3


def small_stamp(images: torch.Tensor) -> torch.Tensor:
    """A white 2x2 square near the lower right corner.

    Small on purpose: Neural Cleanse finds a backdoor by its unusually small mask, and a
    4x4 square reversed to masks of 9-15 pixels, inside the 10-31 that smoke's digits
    need, so its target's anomaly index was 0.1-2.0 on seeds 0-5 and never flagged.
    """
    stamped = images.clone()
    stamped[..., -3:-1, -3:-1] = 1.0
    return stamped


def backdoored_model(
    ctx: Context, stamp: Callable[[torch.Tensor], torch.Tensor], name: str = "backdoor"
) -> nn.Module:
    """A smoke model trained with ``stamp``ed owner images relabelled to ``TARGET``
    (``name`` seeds its initialisation and batches)."""
    owner = ctx.splits.owner
    model = ctx.new_model(name)
    train(
        model,
        owner.images,
        owner.labels,
        ctx.protocol.training,
        device=ctx.device,
        generator=ctx.generator(name),
        triggers=(stamp(owner.images[:100]), torch.full((100,), TARGET)),
        triggers_per_batch=10,
    )
    return model
