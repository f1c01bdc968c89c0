"""Watermark overwriting: the attacker embeds a mark of the victim's scheme with a key of its
own into the stolen model, hoping to wash out the owner's. Adi et al., "Turning Your
Weakness Into a Strength", USENIX Security 2018 (ownership piracy, Section 5.3), and Lukas
et al., "SoK: How Robust is Image Classification Deep Neural Network Watermarking?", IEEE
S&P 2022 ("overwriting").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from arena.context import Context
from arena.errors import ArenaError
from arena.plugin import Attack, AttackOutcome, Defense, ThreatModel
from arena.registry import register_attack
from attacks.piracy.piracy import attacker_context, attacker_keygen
from attacks.removal.common import AttackerTraining
from defenses.trigger_set import TriggerSetDefense


@dataclass(frozen=True)
class OverwriteParams(AttackerTraining):
    triggers_per_batch: int | None = None  # trigger-set schemes; None: the protocol's

    def check(self) -> None:
        super().check()
        if self.triggers_per_batch is not None and self.triggers_per_batch < 1:
            raise ValueError(f"triggers_per_batch must be >= 1, got {self.triggers_per_batch}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


@register_attack("overwrite")
class Overwrite(Attack):
    """Overwrite the owner's mark with the attacker's own (Adi et al., USENIX Security 2018;
    Lukas et al., IEEE S&P 2022).

    The attacker draws a fresh key of the victim's scheme and configuration (the public
    verification key names them) from a seed and data of its own, and embeds it into the
    stolen model with its own optimizer settings: trigger-set schemes fine-tune every
    layer on the attacker's split with ``triggers_per_batch`` of its triggers appended to
    every batch, as the owner marked the model; white-box schemes fine-tune with their
    regularizer on the attacker's key. Unlike ``piracy`` the attacker claims nothing: it
    only hopes the new mark washes out the owner's. ``info`` reports the attacker's own
    key's evidence on the attacked model.
    """

    paper = "Adi et al., USENIX Security 2018; Lukas et al., IEEE S&P 2022"
    Params = OverwriteParams
    version = "2"  # 2: a key of the victim's scheme (1: always abstract trigger images)

    def threat_model(self, ctx: Context) -> ThreatModel:
        epochs = self.params.budget(ctx)
        return ThreatModel(data="attacker-split", labels="true", epochs=epochs)

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        scheme: Defense | None = ctx.victim_scheme
        if scheme is None:
            raise ArenaError(f"{self.name} needs the victim's scheme (a match sets it)")
        attacker = attacker_context(ctx, self.name, model)
        key = attacker_keygen(scheme, attacker)
        settings = self.params.settings(self.params.budget(ctx))
        if isinstance(scheme, TriggerSetDefense):
            per_batch = self.params.triggers_per_batch or ctx.protocol.triggers_per_batch
            scheme.train_with_triggers(model, key, attacker, settings, per_batch, "overwrite")
        else:
            protocol = dataclasses.replace(attacker.protocol, training=settings)
            scheme.mark(model, key, dataclasses.replace(attacker, protocol=protocol))
        evidence = scheme.evidence(model, key, attacker)
        return AttackOutcome(
            model=model,
            info={
                "summary": (
                    f"attacker's own {scheme.name} key answered "
                    f"{evidence.successes}/{evidence.trials}"
                ),
                "attacker_key_agreement": evidence.successes / evidence.trials,
                "attacker_key_successes": evidence.successes,
                "attacker_key_trials": evidence.trials,
                "attacker_key": key.fingerprint,
            },
        )
