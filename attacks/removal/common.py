"""What the weight-editing removal attacks share: the attacker's own fine-tuning settings,
the fine-tuning step on the attacker's split, and the threat model that follows from it.

Pruning, quantization, fine-pruning and weight shifting edit the weights and then, if the
attacker spends a budget on it, fine-tune on the attacker's labelled split. The optimizer
is the attacker's, declared as parameters; nothing is inherited from the owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from arena.context import Context
from arena.plugin import ThreatModel
from arena.training import TrainReport, TrainSettings, train

MAX_EPOCHS = 10_000  # far above any budget; more is a typo, refused before training


@dataclass(frozen=True)
class AttackerTraining:
    """The attacker's fine-tuning budget and optimizer; subclasses add their own fields."""

    epochs: int | None = None  # None: the protocol's attack budget
    lr: float = 0.01
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def check(self) -> None:
        if self.epochs is not None and not 0 <= self.epochs <= MAX_EPOCHS:
            raise ValueError(
                f"epochs must lie in [0, {MAX_EPOCHS:,}] (or None for the protocol's), "
                f"got {self.epochs}"
            )
        self.settings(1).check()

    def budget(self, ctx: Context) -> int:
        """Fine-tuning epochs: the declared ones, else the protocol's attack budget."""
        return ctx.protocol.attack_epochs if self.epochs is None else self.epochs

    def settings(self, epochs: int, label_smoothing: float = 0.0) -> TrainSettings:
        return TrainSettings(
            epochs=epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            label_smoothing=label_smoothing,
        )


def removal_threat_model(epochs: int, reads_data: bool = False) -> ThreatModel:
    """Fine-tuning needs the attacker's split with true labels; without it the attack
    needs no data (``reads_data``: it still looks at unlabelled attacker images)."""
    if epochs > 0:
        return ThreatModel(data="attacker-split", labels="true", epochs=epochs)
    return ThreatModel(data="attacker-split" if reads_data else "none", labels="none", epochs=0)


def fine_tune(
    model: nn.Module,
    ctx: Context,
    settings: TrainSettings,
    name: str,
) -> TrainReport:
    """Fine-tune every layer of ``model`` in place on the attacker's labelled split."""
    attacker = ctx.splits.attacker
    return train(
        model,
        attacker.images,
        attacker.labels,
        settings,
        device=ctx.device,
        generator=ctx.generator(f"attack:{name}"),
        description=f"{name} fine-tuning",
        progress=ctx.progress,
        augment=ctx.protocol.augment,
    )
