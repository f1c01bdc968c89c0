"""Watermark overwriting: the attacker embeds a mark of the victim's scheme with a key of its
own into the stolen model, hoping to wash out the owner's. Adi et al., "Turning Your
Weakness Into a Strength", USENIX Security 2018 (ownership piracy, Section 5.3), and Lukas
et al., "SoK: How Robust is Image Classification Deep Neural Network Watermarking?", IEEE
S&P 2022 ("overwriting").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, Defense, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.util.errors import ArenaError
from attacks.common import attacker_context
from attacks.removal.common import EPOCH_GRID, MAX_EPOCHS, AttackerTraining


@dataclass(frozen=True)
class OverwriteParams(AttackerTraining):
    epochs: int | None = param(
        None,
        help="epochs embedding the attacker's key; None: the protocol's attack budget",
        min=1,
        max=MAX_EPOCHS,
    )
    triggers_per_batch: int | None = param(
        None, help="trigger images per batch (trigger-set schemes); None: the protocol's", min=1
    )


@register_attack("overwrite")
class Overwrite(RemovalAttack):
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

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Adi et al., USENIX Security 2018; Lukas et al., IEEE S&P 2022"
    Params = OverwriteParams
    version = "2"  # 2: a key of the victim's scheme (1: always abstract trigger images)

    def threat_model(self, ctx: Context) -> ThreatModel:
        epochs = self.params.budget(ctx)
        return ThreatModel(data="attacker-split", labels="true", epochs=epochs)

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        if ctx.victim is None:
            raise ArenaError(f"{self.name} needs the victim's scheme (a match sets it)")
        scheme: Defense = ctx.victim.scheme
        attacker = attacker_context(ctx, self.name, model)
        key = scheme.for_data(attacker).keygen(attacker)
        settings = self.params.settings(self.params.budget(ctx))
        per_batch = self.params.triggers_per_batch or ctx.protocol.triggers_per_batch
        scheme.train_with_key(model, key, attacker, settings, per_batch, "overwrite")
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
