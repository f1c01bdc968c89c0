"""Transfer learning to another task, the seed paper's robustness experiment: Adi et al.,
"Turning Your Weakness Into a Strength: Watermarking Deep Neural Networks by Backdooring",
USENIX Security 2018, Table 2 (transfer learning from CIFAR-10 to STL-10).

The marked model moves to a new task with a new output layer: by default scikit-learn's
handwritten digits (``sklearn.datasets.load_digits``: 1,797 images of 8 x 8 pixels,
shipped offline), or with ``task=stl10`` the paper's STL-10. The result solves another
task, so the arena decides on the mark with the owner's output layer put back, as the
seed paper does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.data import load_stl10, to_model_input
from arena.core.models import reinitialize_head
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import accuracy, train
from arena.util.errors import ArenaError
from attacks.removal.common import EPOCH_GRID, AttackerTraining

TASK_CLASSES = 10
TASKS = {
    "digits": "sklearn digits",
    "stl10": "STL-10, the 9 classes shared with CIFAR-10",
    "stl10-all": "STL-10, all 10 classes",
}
# STL-10's labels (airplane, bird, car, cat, deer, dog, horse, monkey, ship, truck) -> the
# CIFAR-10 label of each shared class: the new head answers in CIFAR-10's numbering.
# STL-10's "monkey" (7) has no CIFAR-10 class, and CIFAR-10's "frog" (6) no STL-10 one.
STL10_TO_CIFAR10 = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4, 5: 5, 6: 7, 8: 8, 9: 9}


@dataclass(frozen=True)
class TransferParams(AttackerTraining):
    task: Literal["digits", "stl10", "stl10-all"] = param(
        "digits",
        help="the new task: scikit-learn's digits (offline); STL-10's 9 classes shared with "
        "CIFAR-10 (the paper's Table 2), or all 10; STL-10 is read from the data folder "
        "(arena data fetch stl10)",
    )
    layers: Literal["all", "head"] = param(
        "all", help="fine-tune every layer, or the new head only"
    )
    test_fraction: float = param(
        0.3,
        help="of the digits, held out for the new task's accuracy (STL-10 has its own test split)",
        above=0,
        below=1,
    )


@register_attack("transfer")
class TransferLearning(RemovalAttack):
    """Transfer learning to a new task (Adi et al., USENIX Security 2018, Table 2).

    The output layer is re-initialised and the model fine-tuned (every layer, or the head
    only with ``layers="head"``) on the new task's training images, resized to the
    protocol's input; its test images give the new task's accuracy. The new head keeps the
    protocol's outputs. The attacker trains with its own optimizer: defaults SGD at 0.01
    for the protocol's attack epochs.

    ``task="digits"``: scikit-learn's digits, upscaled from 8 x 8 grey levels, split by
    ``test_fraction`` (seeded); labels 0-9 on the first ten outputs.

    ``task="stl10"``: the paper's transfer from CIFAR-10 to STL-10 (its Table 2: 81.87%
    STL-10 test accuracy, 72.0% of the triggers). STL-10's labelled images (5,000 train,
    8,000 test, 96 x 96) are downsampled to the protocol's input size (32 x 32 on
    ``cifar10``) with an antialiased bilinear filter, and STL-10's own train / test split
    is kept. The project's text of the paper names STL-10 and the two accuracies but not
    which classes were used; the arena keeps the 9 classes STL-10 shares with CIFAR-10
    (4,500 train, 7,200 test images), labelled with their CIFAR-10 numbers, and drops
    "monkey", which CIFAR-10 lacks. ``task="stl10-all"`` keeps all 10 classes in STL-10's
    own numbering instead. The files are read from the data folder (``ARENA_DATA``,
    ``stl10_binary/``; ``arena data fetch stl10`` downloads them once).
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Adi et al., USENIX Security 2018"
    Params = TransferParams
    changes_task = True

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="out-of-distribution", labels="true", epochs=self.params.budget(ctx)
        )

    def check_data(self, ctx: Context) -> None:
        if ctx.num_classes < TASK_CLASSES:
            raise ArenaError(
                f"attack {self.name!r} needs a model with at least {TASK_CLASSES} outputs for "
                f"the {TASKS[self.params.task]}; protocol {ctx.protocol.name!r} has "
                f"{ctx.num_classes}"
            )
        if self.params.task != "digits":
            load_stl10()  # a missing or corrupt STL-10 is one line before any training

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        task = TASKS[self.params.task]
        (fit_images, fit_labels), (test_images, test_labels) = self._task_data(ctx)
        reinitialize_head(model, generator_seed=ctx.rng(f"attack:{self.name}").integers(2**62))
        report = train(
            model,
            fit_images,
            fit_labels,
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=ctx.generator(f"attack:{self.name}"),
            description=f"transfer to {task}",
            progress=ctx.progress,
            trainable=self.params.layers,
            augment=ctx.protocol.augment,
        )
        task_acc = accuracy(model, test_images, test_labels, ctx.device)
        return AttackOutcome(
            model=model,
            replaced_head=True,
            info={
                "task": task,
                "task_test_acc": task_acc,
                "task_train_size": len(fit_labels),
                "task_test_size": len(test_labels),
                "steps": report.steps,
            },
        )

    def _task_data(self, ctx: Context) -> tuple[TaskSplit, TaskSplit]:
        """The new task's (train, test) images at the protocol's input, and labels."""
        self.check_data(ctx)
        if self.params.task == "digits":
            images, labels = digits_data(ctx)
            order = ctx.rng(f"attack:{self.name}:split").permutation(len(labels))
            test_size = round(self.params.test_fraction * len(labels))
            test, fit = torch.as_tensor(order[:test_size]), torch.as_tensor(order[test_size:])
            return (images[fit], labels[fit]), (images[test], labels[test])
        train_raw, test_raw = load_stl10()
        shared = self.params.task == "stl10"
        return stl10_split(*train_raw, ctx, shared), stl10_split(*test_raw, ctx, shared)


TaskSplit = tuple[torch.Tensor, torch.Tensor]


def digits_data(ctx: Context) -> TaskSplit:
    """scikit-learn's digits at the protocol's input size, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # levels 0-16
    images = to_model_input(grey, ctx.protocol.image_size, ctx.protocol.channels)
    return images, torch.as_tensor(digits.target, dtype=torch.long)


def stl10_split(images: np.ndarray, labels: np.ndarray, ctx: Context, shared: bool) -> TaskSplit:
    """STL-10 images at the protocol's input size: the classes shared with CIFAR-10 in its
    numbering (``shared``), or all ten in STL-10's own."""
    if shared:
        keep = np.isin(labels, list(STL10_TO_CIFAR10))
        images, labels = images[keep], np.vectorize(STL10_TO_CIFAR10.get)(labels[keep])
    inputs = to_model_input(images, ctx.protocol.image_size, ctx.protocol.channels)
    return inputs, torch.as_tensor(np.asarray(labels, dtype=np.int64))
