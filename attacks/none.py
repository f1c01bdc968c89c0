"""The null attack: the attacker keeps the marked model as it is."""

from __future__ import annotations

from torch import nn

from arena.core.context import Context
from arena.core.plugin import AttackOutcome, RemovalAttack, ThreatModel
from arena.core.registry import register_attack


@register_attack("none")
class NoAttack(RemovalAttack):
    """No attack: the marked model unchanged. Every mark must still verify here."""

    threat = "none"
    paper = "-"

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="none", labels="none")

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        return AttackOutcome(model=model)
