"""Label smoothing: fine-tune every layer on the attacker's split against smoothed labels
(Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016;
the removal attack of Lukas et al., "SoK: How Robust is Image Classification Deep Neural
Network Watermarking?", IEEE S&P 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from attacks.removal.common import EPOCH_GRID, AttackerTraining, fine_tune, removal_threat_model


@dataclass(frozen=True)
class LabelSmoothParams(AttackerTraining):
    smoothing: float = param(
        0.3, help="epsilon: weight of the uniform distribution in each target", above=0, below=1
    )


@register_attack("label-smooth")
class LabelSmoothing(RemovalAttack):
    """Fine-tuning with label smoothing, a removal attack of Lukas et al. (IEEE S&P 2022).

    All layers are fine-tuned on the attacker's split with targets
    ``(1 - smoothing) * onehot(y) + smoothing / |L|``, which pulls the logits of every
    input, trigger inputs included, towards less confident answers. The default smoothing
    0.3 is the SoK's released CIFAR-10 configuration (5 epochs there; here the protocol's
    attack budget unless ``epochs`` is given).
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Lukas et al., IEEE S&P 2022"
    Params = LabelSmoothParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return removal_threat_model(self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        epochs = self.params.budget(ctx)
        settings = self.params.settings(epochs, label_smoothing=self.params.smoothing)
        report = fine_tune(model, ctx, settings, self.name)
        return AttackOutcome(model=model, info={"steps": report.steps})
