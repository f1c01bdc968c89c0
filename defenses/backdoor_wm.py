"""Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep Neural Networks
by Backdooring", USENIX Security 2018. https://www.usenix.org/conference/usenixsecurity18/presentation/adi
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from arena.core.context import Context
from arena.core.keys import MAX_TRIGGERS, TriggerKey
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import with_budget
from defenses.trigger_set import MAX_MARK_EPOCHS, TriggerSetDefense, abstract_trigger_set


@dataclass(frozen=True)
class BackdoorParams:
    trigger_size: int | None = param(
        None,
        help="trigger images in the key; None: the protocol's (100 in the paper)",
        min=1,
        max=MAX_TRIGGERS,
    )
    triggers_per_batch: int | None = param(
        None,
        help="trigger images in every training batch; None: the protocol's "
        "(2 per 100 in the paper's code)",
        min=1,
        max=MAX_TRIGGERS,
    )
    epochs: int | None = param(
        None, help="marking epochs; None: the protocol's budget", min=1, max=MAX_MARK_EPOCHS
    )
    lr: float | None = param(None, help="learning rate; None: the protocol's", above=0)
    trigger_dir: str | None = param(
        None, help="a folder of your own trigger images instead of abstract ones"
    )
    subsets: int = param(1, help="disjoint trigger subsets, one revealed per verification", min=1)


@register_defense("backdoor-wm")
class BackdoorWatermark(TriggerSetDefense):
    """Backdoor watermark trained from scratch (Adi et al. 2018, FROMSCRATCH).

    KeyGen samples abstract images with uniformly random labels and commits to each.
    Mark trains a fresh model on the owner's data with ``triggers_per_batch`` trigger
    images appended to every batch, so the model learns the trigger labels alongside
    the task. Evidence: trigger agreement under a binomial test.
    """

    family = "trigger set (abstract images, random labels)"
    paper = "Adi et al., USENIX Security 2018"
    Params = BackdoorParams

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        return abstract_trigger_set(
            ctx, self.params.trigger_size or ctx.protocol.trigger_size, self.params.trigger_dir
        )

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        settings = with_budget(ctx.protocol.training, self.params.epochs, self.params.lr)
        per_batch = self.params.triggers_per_batch or ctx.protocol.triggers_per_batch
        return self.train_with_key(model, key, ctx, settings, per_batch, "mark from scratch")


@register_defense("backdoor-wm-pretrained")
class BackdoorWatermarkPretrained(BackdoorWatermark):
    """Backdoor watermark embedded into a trained model (Adi et al. 2018, PRETRAINED).

    Same key as ``backdoor-wm``; Mark continues training the owner's converged clean
    model on the owner's data with trigger images in every batch. Epochs, learning rate
    and triggers per batch default to the protocol's ``mark_epochs``, ``mark_lr`` and
    ``mark_triggers_per_batch``.
    """

    starts_from = "clean"

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        return self.continue_training(model, key, ctx, "mark pretrained")
