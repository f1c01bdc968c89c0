"""The four fine-tuning attacks of Adi et al., "Turning Your Weakness Into a Strength:
Watermarking Deep Neural Networks by Backdooring", USENIX Security 2018, Section 5.2.

FTLL fine-tunes the last layer, FTAL all layers; RTLL and RTAL first re-initialise the
output layer. The attacker trains on its own split with true labels and its own optimizer
settings, declared below; none are inherited from the owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from arena.core.context import Context
from arena.core.models import reinitialize_head
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import train
from attacks.removal.common import EPOCH_GRID, AttackerTraining


@dataclass(frozen=True)
class FineTuneParams(AttackerTraining):
    """The attacker's optimizer and budget; nothing else to choose."""


class FineTuneAttack(RemovalAttack):
    """Shared by FTLL, FTAL, RTLL and RTAL; the subclasses set the two switches."""

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Adi et al., USENIX Security 2018"
    Params = FineTuneParams
    trainable: ClassVar[Literal["head", "all"]] = "all"
    reinitialize: ClassVar[bool] = False

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        if self.reinitialize:
            reinitialize_head(model, generator_seed=ctx.rng(f"attack:{self.name}").integers(2**62))
        attacker = ctx.splits.attacker
        report = train(
            model,
            attacker.images,
            attacker.labels,
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=ctx.generator(f"attack:{self.name}"),
            description=self.name.upper(),
            progress=ctx.progress,
            trainable=self.trainable,
            augment=ctx.protocol.augment,
        )
        return AttackOutcome(
            model=model, replaced_head=self.reinitialize, info={"steps": report.steps}
        )


@register_attack("ftll")
class FineTuneLastLayer(FineTuneAttack):
    """FTLL: fine-tune only the output layer on the attacker's data (Adi et al. 2018)."""

    trainable = "head"


@register_attack("ftal")
class FineTuneAllLayers(FineTuneAttack):
    """FTAL: fine-tune every layer on the attacker's data (Adi et al. 2018)."""


@register_attack("rtll")
class RetrainLastLayer(FineTuneAttack):
    """RTLL: re-initialise the output layer, then train only it (Adi et al. 2018)."""

    trainable = "head"
    reinitialize = True


@register_attack("rtal")
class RetrainAllLayers(FineTuneAttack):
    """RTAL: re-initialise the output layer, then fine-tune every layer (Adi et al. 2018)."""

    reinitialize = True
