"""Random checkerboards: a trigger-set watermark with trigger images of its own.

The scheme is the backdoor watermark of Adi et al. ("Turning Your Weakness Into a
Strength: Watermarking Deep Neural Networks by Backdooring", USENIX Security 2018) with
other trigger images: each trigger is a checkerboard whose light squares take random grey
levels in 128-255 and whose dark squares take random levels in 0-127, and each carries a
label drawn uniformly at random. The owner trains the model from scratch with a few
triggers appended to every batch. Since the labels are drawn independently of every
model, a model never marked with the key answers each trigger with its label with
probability exactly 1/|L|, and the binomial null is exact.

This module is the worked defense of CONTRIBUTING.md: a third-party scheme that the arena
finds through the ``arena.defenses`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena import (
    ArenaError,
    Context,
    Defense,
    Evidence,
    TriggerKey,
    param,
    predict,
    register_defense,
    to_model_input,
    train,
)


@dataclass(frozen=True)
class CheckerboardParams:
    trigger_size: int | None = param(
        None, help="triggers in the key; None: the protocol's", min=1, max=10_000
    )
    square: int = param(2, help="side of a checkerboard square in pixels", min=1)


@register_defense("checkerboard-wm")
class CheckerboardWatermark(Defense):
    """Random-checkerboard triggers with uniformly random labels, trained in from scratch."""

    family = "trigger set (random checkerboards, random labels)"
    paper = "after Adi et al., USENIX Security 2018"
    key_type = TriggerKey
    labels_independent = True  # the labels do not depend on the trigger images
    # Three defaults, spelled out for the example.
    access = "black-box"  # the evidence queries the model
    starts_from = "scratch"  # mark() gets a freshly initialised model
    exact_null = True  # labels uniform and independent of every model: Binomial(n, 1/|L|)
    Params = CheckerboardParams

    def keygen(self, ctx: Context) -> TriggerKey:
        size, square = ctx.protocol.image_size, self.params.square
        if 2 * square > size:  # a rule that needs the protocol: checked here, not by param()
            raise ArenaError(
                f"defense {self.name!r}: square must be at most {size // 2} on {size}-pixel images"
            )
        rng = ctx.rng("keygen")  # the key's own seeded stream
        count = self.params.trigger_size or ctx.protocol.trigger_size
        images = _checkerboards(rng, count, ctx.protocol.channels, size, square)
        labels = rng.integers(0, ctx.num_classes, size=count)
        return TriggerKey.create(self.name, ctx.num_classes, images, labels)

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        owner = ctx.splits.owner
        train(
            model,
            owner.images,
            owner.labels,
            ctx.protocol.training,
            device=ctx.device,
            generator=ctx.owner_generator(),
            description="mark with checkerboards",
            progress=ctx.progress,
            triggers=_triggers(key, ctx),
            triggers_per_batch=ctx.protocol.triggers_per_batch,
            augment=ctx.protocol.augment,
        )
        return model

    def evidence(self, model: nn.Module, key: TriggerKey, ctx: Context) -> Evidence:
        key.open()  # a key altered after it was committed claims nothing
        images, labels = _triggers(key, ctx)
        agreed = int((predict(model, images, ctx.device) == labels).sum())
        return Evidence(agreed, len(labels), ctx.null_p, ctx.protocol.alpha)


def _checkerboards(
    rng: np.random.Generator, count: int, channels: int, size: int, square: int
) -> np.ndarray:
    """``count`` random checkerboards, uint8 (count, channels, size, size)."""
    cells = -(-size // square)  # squares per side, the last one cut at the border
    light = np.add.outer(np.arange(cells), np.arange(cells)) % 2 == 0
    phase = rng.integers(0, 2, size=(count, 1, 1, 1)).astype(bool)  # which corner is light
    levels = rng.integers(0, 128, size=(count, channels, cells, cells))
    levels = np.where(light ^ phase, levels + 128, levels).astype(np.uint8)
    return levels.repeat(square, axis=2).repeat(square, axis=3)[:, :, :size, :size]


def _triggers(key: TriggerKey, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """The key's trigger images as model inputs (float in [0, 1]) and their labels."""
    images = to_model_input(key.images, ctx.protocol.image_size, ctx.protocol.channels)
    return images, torch.as_tensor(key.labels)
