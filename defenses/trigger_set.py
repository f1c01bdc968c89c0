"""What every trigger-set scheme shares: committed keys and agreement evidence.

A scheme supplies ``sample_triggers`` (its trigger images and labels) and ``mark``; key
generation with commitments and the black-box evidence (open every commitment, query the
model on the triggers, count answers equal to the committed labels) are the same for all.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.keys import TriggerKey, abstract_images
from arena.core.plugin import Defense
from arena.core.stats import Evidence
from arena.core.training import BatchLoss, TrainSettings, predict, train, with_budget
from arena.util.errors import ArenaError
from arena.util.images import load_image_folder

MAX_MARK_EPOCHS = 10_000  # far above any budget; more is a typo, refused before training


class TriggerSetDefense(Defense):
    """Base class of black-box schemes whose key is a committed trigger set."""

    key_type = TriggerKey
    # The public label check (arena.ownership.public) applies: the key's labels are chosen with no
    # regard to what clean models answer, so clean models must not agree with them.
    labels_independent: ClassVar[bool] = True

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        """Trigger images (uint8, protocol shape) and their labels."""
        raise NotImplementedError

    def sample_controls(
        self, ctx: Context, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """One control input with its true label per trigger, or None (the default): see
        ``VerificationKey.controls``."""
        return None

    def keygen(self, ctx: Context) -> TriggerKey:
        images, labels = self.sample_triggers(ctx)
        check_trigger_images(self.name, images, "sample_triggers")
        controls = self.sample_controls(ctx, images, labels)
        if controls is not None:
            check_trigger_images(self.name, controls[0], "sample_controls")
        subsets = getattr(self.params, "subsets", 1)
        return TriggerKey.create(self.name, ctx.num_classes, images, labels, subsets, controls)

    def evidence(self, model: nn.Module, key: TriggerKey, ctx: Context) -> Evidence:
        key.open()  # Verify opens every commitment before it queries the model
        agreed = self.answered(model, key, ctx)
        return Evidence(int(agreed.sum()), len(key), self.null_p(ctx), ctx.protocol.alpha)

    def answered(self, model: nn.Module, key: TriggerKey, ctx: Context) -> torch.Tensor:
        """Per trigger: did the model answer it with its committed label?"""
        images = to_model_input(key.images, ctx.protocol.image_size, ctx.protocol.channels)
        return predict(model, images, ctx.device) == key.tensors()[1]

    def objective(self, key: TriggerKey, ctx: Context) -> BatchLoss | None:
        """The scheme's loss for one training batch with its triggers appended (see
        ``arena.core.training.BatchLoss``), or None (the default): cross-entropy on the
        owner's data and the triggers alike, the seed paper's."""
        return None

    def null_p(self, ctx: Context) -> float:
        """The scheme's nominal chance agreement: 1/|L| for labels drawn at random."""
        return ctx.null_p

    def train_with_key(
        self,
        model: nn.Module,
        key: TriggerKey,
        ctx: Context,
        settings: TrainSettings,
        triggers_per_batch: int,
        description: str,
    ) -> nn.Module:
        """Train on the owner's split with ``triggers_per_batch`` triggers in every batch."""
        owner = ctx.splits.owner
        triggers = (
            to_model_input(key.images, ctx.protocol.image_size, ctx.protocol.channels),
            key.tensors()[1],
        )
        train(
            model,
            owner.images,
            owner.labels,
            settings,
            device=ctx.device,
            generator=ctx.owner_generator(),
            description=description,
            progress=ctx.progress,
            triggers=triggers,
            triggers_per_batch=triggers_per_batch,
            augment=ctx.protocol.augment,
            batch_loss=self.objective(key, ctx),
        )
        return model

    def train_with_triggers(self, *args: Any, **kwargs: Any) -> nn.Module:
        """Release 0.1's name of ``train_with_key``, for one release."""
        warnings.warn(
            "train_with_triggers is now train_with_key (a Defense hook); the old name goes "
            "in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.train_with_key(*args, **kwargs)

    def continue_training(
        self, model: nn.Module, key: TriggerKey, ctx: Context, description: str
    ) -> nn.Module:
        """Mark a trained model: continue training it with the key in every batch, with
        the protocol's ``mark_*`` budget unless the parameters say otherwise."""
        protocol = ctx.protocol
        settings = with_budget(
            protocol.training,
            getattr(self.params, "epochs", None) or protocol.mark_epochs,
            getattr(self.params, "lr", None) or protocol.mark_lr,
        )
        per_batch = (
            getattr(self.params, "triggers_per_batch", None) or protocol.mark_triggers_per_batch
        )
        return self.train_with_key(model, key, ctx, settings, per_batch, description)


def abstract_trigger_set(
    ctx: Context, size: int, trigger_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """The seed paper's key: abstract images with labels uniform over the classes.

    Images are drawn procedurally, or read from the user's ``trigger_dir``.
    """
    rng = ctx.rng("keygen")
    protocol = ctx.protocol
    if trigger_dir:
        images = load_image_folder(Path(trigger_dir), protocol.image_size, protocol.channels)
    else:
        images = abstract_images(size, protocol.image_size, protocol.channels, rng)
    labels = rng.integers(0, ctx.num_classes, size=len(images))
    return images, labels


def check_trigger_images(scheme: str, images: object, source: str) -> None:
    """What a scheme's ``sample_triggers`` (or ``sample_controls``) must return: uint8
    pixels in an (N, C, H, W) array, N >= 1, not all the same image. Anything else is a
    plugin bug, refused before it is committed to (float images in [0, 1] would be cast
    to black triggers, committed, cached and marked without a word)."""
    where = f"defense {scheme!r}: {source} returned"
    if not isinstance(images, np.ndarray):
        raise ArenaError(f"{where} a {type(images).__name__}, not a numpy array")
    if images.dtype != np.uint8:
        hint = " (scale images in [0, 1] by 255 and round)" if images.dtype.kind == "f" else ""
        raise ArenaError(f"{where} {images.dtype} images; it must return uint8 pixels{hint}")
    if images.ndim != 4 or len(images) == 0:
        raise ArenaError(f"{where} an array of shape {images.shape}; it must be (N, C, H, W)")
    if len(images) > 1 and (images == images[:1]).all():
        raise ArenaError(f"{where} {len(images)} identical images; a key needs distinct ones")
