"""The owner's clean model: the protocol's training budget on the owner's split.

Trained once per protocol, architecture and seed and kept in the artifact cache; a
match's clean model, a pretrained scheme's starting point and calibration's reference
models are all this model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from arena import __version__
from arena.context import Context
from arena.protocols import Protocol
from arena.store import ArtifactCache
from arena.training import Augment, TrainSettings, train


def artifact_base(protocol: Protocol, seed: int) -> dict[str, Any]:
    """What every artifact of a match depends on: the protocol, the seed, the code."""
    return {"protocol": protocol.fingerprint, "seed": seed, "arena": __version__}


def clean_model(ctx: Context, cache: ArtifactCache) -> tuple[nn.Module, dict[str, Any], bool]:
    """The owner's clean model of ``ctx``'s protocol and seed, trained once and cached.

    Returns the model, its cache metadata and whether it came from the cache.
    """
    base = artifact_base(ctx.protocol, ctx.seed)
    return cache.model(
        cache.folder("clean", base),
        build=ctx.owner_model,
        train=lambda model: train_clean(model, ctx),
        spec=base,
    )


def train_clean(
    model: nn.Module,
    ctx: Context,
    settings: TrainSettings | None = None,
    augment: Augment | None = None,
    description: str = "clean model",
) -> dict[str, Any]:
    """Train a clean model on the owner's split: the protocol's budget and augmentation,
    unless ``settings`` or ``augment`` say otherwise (a reference model's recipe)."""
    splits = ctx.splits
    report = train(
        model,
        splits.owner.images,
        splits.owner.labels,
        settings or ctx.protocol.training,
        device=ctx.device,
        generator=ctx.owner_generator(),
        description=description,
        progress=ctx.progress,
        augment=ctx.protocol.augment if augment is None else augment,
    )
    return {"train_seconds": report.seconds, "steps": report.steps}
