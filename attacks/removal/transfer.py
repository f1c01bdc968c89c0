"""Transfer learning to another task, the seed paper's robustness experiment: Adi et al.,
"Turning Your Weakness Into a Strength: Watermarking Deep Neural Networks by Backdooring",
USENIX Security 2018, Table 2 (transfer learning from CIFAR-10 to STL-10).

Here the marked model moves from the protocol's data to scikit-learn's handwritten digits
(``sklearn.datasets.load_digits``: 1,797 images of 8 x 8 pixels, shipped offline) with a
new output layer. The result solves another task, so the arena decides on the mark with
the owner's output layer put back, as the seed paper does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.models import reinitialize_head
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import accuracy, train
from arena.util.errors import ArenaError
from attacks.removal.common import EPOCH_GRID, AttackerTraining

TASK = "sklearn digits"
TASK_CLASSES = 10


@dataclass(frozen=True)
class TransferParams(AttackerTraining):
    layers: Literal["all", "head"] = param(
        "all", help="fine-tune every layer, or the new head only"
    )
    test_fraction: float = param(
        0.3, help="of the new task's images, held out for its accuracy", above=0, below=1
    )


@register_attack("transfer")
class TransferLearning(RemovalAttack):
    """Transfer learning to scikit-learn's digits (Adi et al., USENIX Security 2018, Table 2).

    The output layer is re-initialised and the model fine-tuned (every layer, or the head
    only with ``layers="head"``) on a seeded train part of the digits, upscaled from 8 x 8
    grey levels to the protocol's input; the held-out part gives the new task's accuracy.
    The new head keeps the protocol's outputs (the digits use the first ten). The attacker
    trains with its own optimizer: defaults SGD at 0.01 for the protocol's attack epochs.
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Adi et al., USENIX Security 2018"
    Params = TransferParams
    changes_task = True

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="out-of-distribution", labels="true", epochs=self.params.budget(ctx)
        )

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        if ctx.num_classes < TASK_CLASSES:
            raise ArenaError(
                f"attack {self.name!r} needs a model with at least {TASK_CLASSES} outputs for "
                f"the {TASK}; protocol {ctx.protocol.name!r} has {ctx.num_classes}"
            )
        images, labels = task_data(ctx)
        order = ctx.rng(f"attack:{self.name}:split").permutation(len(labels))
        test_size = round(self.params.test_fraction * len(labels))
        test, fit = torch.as_tensor(order[:test_size]), torch.as_tensor(order[test_size:])
        reinitialize_head(model, generator_seed=ctx.rng(f"attack:{self.name}").integers(2**62))
        report = train(
            model,
            images[fit],
            labels[fit],
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=ctx.generator(f"attack:{self.name}"),
            description=f"transfer to {TASK}",
            progress=ctx.progress,
            trainable=self.params.layers,
            augment=ctx.protocol.augment,
        )
        task_acc = accuracy(model, images[test], labels[test], ctx.device)
        return AttackOutcome(
            model=model,
            replaced_head=True,
            info={
                "task": TASK,
                "task_test_acc": task_acc,
                "task_test_size": test_size,
                "steps": report.steps,
            },
        )


def task_data(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits at the protocol's input size, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # levels 0-16
    images = to_model_input(grey, ctx.protocol.image_size, ctx.protocol.channels)
    return images, torch.as_tensor(digits.target, dtype=torch.long)
