"""Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
Networks", IEEE S&P 2019. https://doi.org/10.1109/SP.2019.00031

ART's ``NeuralCleanse`` wraps Keras models only, so trigger reverse-engineering, the MAD
outlier test and unlearning are written here in PyTorch (the reversal and the outlier
test in ``attacks/removal/reversal.py``, which laundering shares); unlearning uses the
arena's training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import TrainSettings, train
from attacks.removal.common import EPOCH_GRID
from attacks.removal.reversal import (
    MAD_CONSISTENCY,
    TriggerReversal,
    anomaly_indices,
    reverse_triggers,
    stamp,
    trigger_success,
)

__all__ = ["MAD_CONSISTENCY", "NeuralCleanse", "NeuralCleanseParams", "anomaly_indices"]


@dataclass(frozen=True)
class NeuralCleanseParams(TriggerReversal):
    threshold: float = param(
        2.0, help="anomaly index above which a small mask is flagged (the paper's)", above=0
    )
    unlearn_fraction: float = param(
        0.2,
        help="attacker images stamped with a reversed trigger (the paper's)",
        above=0,
        max=1,
    )
    unlearn_epochs: int | None = param(
        None, help="unlearning epochs; None: the protocol's attack budget", min=1
    )
    unlearn_lr: float = param(0.01, help="unlearning learning rate", above=0)
    unlearn_batch_size: int = param(64, help="unlearning batch size", min=1)
    unlearn_optimizer: Literal["sgd", "adam"] = param("sgd", help="unlearning optimizer")
    unlearn_momentum: float = param(
        0.9, help="unlearning SGD momentum; adam ignores it", min=0, below=1
    )
    unlearn_weight_decay: float = param(5e-4, help="unlearning weight decay", min=0)

    def settings(self, default_epochs: int) -> TrainSettings:
        return TrainSettings(
            epochs=default_epochs if self.unlearn_epochs is None else self.unlearn_epochs,
            batch_size=self.unlearn_batch_size,
            optimizer=self.unlearn_optimizer,
            lr=self.unlearn_lr,
            momentum=self.unlearn_momentum,
            weight_decay=self.unlearn_weight_decay,
        )


@register_attack("neural-cleanse")
class NeuralCleanse(RemovalAttack):
    """Neural Cleanse: reverse-engineer, detect and unlearn backdoors (Wang et al.,
    IEEE S&P 2019).

    For every class, Adam fits a mask ``m`` and a pattern ``p`` (tanh-parametrised into
    [0, 1]) so that ``(1 - m) * x + m * p`` on the attacker's clean images is classified as
    that class, with an L1 penalty on ``m``. A backdoor's target class needs a much
    smaller mask than the others: a class whose mask L1 norm lies below the median with an
    anomaly index (distance from the median over the MAD, consistency constant 1.4826)
    above ``threshold`` is flagged. Unlearning fine-tunes on the attacker's split with
    ``unlearn_fraction`` of the images carrying a flagged class's reversed trigger under
    their true label. When no class is flagged, the attacker still fine-tunes on its clean
    data with the same budget (a plain fine-tuning attack); ``info`` says which happened.

    Blind spot: a trigger that only works on images of one source class (Zhang et al.'s
    ``content`` and ``noise`` stamp source-class images) is not a shortcut from every
    class, so its target's mask need not stand out (Wang et al., Section VII-C, on
    partial backdoors); neither does it when the other classes' masks spread widely, as
    on the small MNIST models of ``mnist5k`` (README, "Removal catalog").
    """

    budget_curve = Budget("unlearn_epochs", EPOCH_GRID)

    paper = "Wang et al., IEEE S&P 2019"
    Params = NeuralCleanseParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        epochs = self.params.settings(ctx.protocol.attack_epochs).epochs
        return ThreatModel(data="attacker-split", labels="true", epochs=epochs)

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        attacker = ctx.splits.attacker
        generator = ctx.generator(f"attack:{self.name}")
        masks, patterns = reverse_triggers(
            model, attacker.images, ctx.num_classes, self.params, generator, ctx.device
        )
        norms = masks.flatten(1).sum(1).tolist()
        success = [
            trigger_success(model, attacker.images, masks[target], patterns[target], target)
            for target in range(ctx.num_classes)
        ]
        indices = anomaly_indices(norms)
        flagged = [  # only unusually small masks: a backdoor is a shortcut
            target
            for target, (norm, index) in enumerate(zip(norms, indices))
            if norm < np.median(norms) and index > self.params.threshold
        ]
        images = attacker.images.clone()
        if flagged:
            chosen = torch.randperm(len(images), generator=generator)
            chosen = chosen[: round(self.params.unlearn_fraction * len(images))]
            for position, row in enumerate(chosen.tolist()):
                target = flagged[position % len(flagged)]
                images[row] = stamp(images[row], masks[target], patterns[target])
        report = train(
            model,
            images,
            attacker.labels,  # true labels: the reversed trigger must stop mattering
            self.params.settings(ctx.protocol.attack_epochs),
            device=ctx.device,
            generator=generator,
            description="neural cleanse unlearning",
            progress=ctx.progress,
            augment=ctx.protocol.augment,
        )
        return AttackOutcome(
            model=model,
            info={
                "summary": (
                    f"flagged class {', '.join(map(str, flagged))}"
                    if flagged
                    else "no class flagged"
                )
                + f" (max anomaly index {max(indices):.2f})",
                "flagged_classes": flagged,
                "mask_l1_norms": norms,
                "anomaly_indices": indices,
                "reversed_trigger_success": success,
                "unlearning": "reversed triggers" if flagged else "clean data (none flagged)",
                "steps": report.steps,
            },
        )
