"""Regularization: fine-tune every layer on the attacker's split under a strong L2 weight
decay, optionally followed by a recovery phase at an ordinary one (the regularization
removal attack evaluated by Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image
Classification Deep Neural Network Watermarking?", IEEE S&P 2022).

Weight decay pulls every weight toward zero at a rate proportional to its size; the
task loss on the attacker's data pushes back only on the weights the task needs. What
the trigger set alone needs has no such defender and decays. A short recovery phase at
an ordinary decay may follow, to win back accuracy the strong decay cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import TrainSettings
from attacks.removal.common import MAX_EPOCHS, AttackerTraining, fine_tune, removal_threat_model


@dataclass(frozen=True)
class RegularizeParams(AttackerTraining):
    weight_decay: float = param(
        0.3, help="the strong L2 decay of the first phase (SGD's weight_decay)", above=0
    )
    recover_epochs: int = param(
        0,
        help="epochs fine-tuned after the decay phase, at recover_weight_decay; 0: none",
        min=0,
        max=MAX_EPOCHS,
    )
    recover_weight_decay: float = param(
        5e-4, help="the ordinary decay of the recovery phase", min=0
    )

    def check(self) -> None:
        if self.recover_weight_decay >= self.weight_decay:
            raise ValueError(
                f"recover_weight_decay {self.recover_weight_decay} must be below weight_decay "
                f"{self.weight_decay}: the decay phase is the strong one"
            )

    def recover_settings(self) -> TrainSettings:
        return dataclasses.replace(
            self.settings(self.recover_epochs), weight_decay=self.recover_weight_decay
        )


@register_attack("regularize")
class Regularization(RemovalAttack):
    """Fine-tuning under strong weight decay (Lukas et al., IEEE S&P 2022).

    Every layer is fine-tuned on the attacker's labelled split for ``epochs`` (default:
    the protocol's attack budget) with the attacker's SGD at ``lr`` 0.01 and L2 decay
    ``weight_decay``. With ``recover_epochs`` > 0 a second phase follows at
    ``recover_weight_decay`` (the ordinary 5e-4 of the other fine-tuning attacks), each
    phase with its own cosine schedule; nothing is inherited from the owner.

    Why decay 0.3 and no recovery, measured on smoke (backdoor-wm, seed 0, the marked
    model at 20 of 20 triggers and 86.5% test accuracy; 3 epochs at lr 0.01): SGD
    shrinks each weight by the factor (1 - lr * decay) per step on top of the gradient,
    so the decay has to be hundreds of times the usual 5e-4 before the mark moves
    within a fine-tuning budget. Decay 0.01 and 0.1 left 20 and 19 triggers; 0.3 left
    13 at 80.5% accuracy; 0.5 and 1.0 cost 10 to 60 points. 0.3 is the largest decay
    that keeps a usable model. A recovery epoch at 5e-4 won back 3.5 points and the
    mark with them (19 of 20): much of what the decay does is shrink the logits, which
    fine-tuning scales back up, so recovery is an option, off by default.
    """

    budget_curve = Budget("weight_decay", (0.01, 0.03, 0.1, 0.3, 1.0))

    paper = "Lukas et al., IEEE S&P 2022"
    Params = RegularizeParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return removal_threat_model(self.params.budget(ctx) + self.params.recover_epochs)

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        steps = 0
        epochs = self.params.budget(ctx)
        if epochs > 0:
            steps += fine_tune(model, ctx, self.params.settings(epochs), self.name).steps
        if self.params.recover_epochs > 0:
            recover = self.params.recover_settings()
            steps += fine_tune(model, ctx, recover, f"{self.name}-recover").steps
        info = {
            "summary": f"decay {self.params.weight_decay} for {epochs} epochs",
            "steps": steps,
        }
        return AttackOutcome(model=model, info=info)
