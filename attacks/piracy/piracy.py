"""Ownership piracy: Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep
Neural Networks by Backdooring", USENIX Security 2018, Section 5.3.
"""

from __future__ import annotations

from torch import nn

from arena.core.context import Context
from arena.core.plugin import AttackOutcome, ClaimAttack, ClaimAttempt, Defense, ThreatModel
from arena.core.registry import register_attack
from attacks.common import attacker_context


@register_attack("piracy")
class Piracy(ClaimAttack):
    """Implant the attacker's own key of the victim's scheme, register it, claim the model.

    The seed paper's ownership-piracy experiment: the attacker, who knows the scheme (its
    verification key names it) but not the owner's key, samples a key of its own with the
    same scheme and configuration and embeds it into the stolen model on its own data, as
    the scheme's pretrained Mark does: trigger-set schemes continue training with the
    attacker's triggers in every batch (the protocol's ``mark_*`` budget); white-box
    schemes continue training with their regularizer on the attacker's key, for the same
    budget. The attacker registers its key after it stole the model and before it
    publishes the pirated one, and claims it. The arena then settles the dispute with
    the ownership protocol (``arena.ownership.claims``): the piracy succeeds only if the owner's
    claim cannot be told from the pirate's.
    """

    threat = "piracy"
    paper = "Adi et al., USENIX Security 2018 (Section 5.3)"

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=ctx.protocol.mark_epochs)

    def claim(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        scheme: Defense = ctx.victim.scheme
        pirate = attacker_context(ctx, self.name, model)
        # A key of the scheme drawn in the pirate's world, with the data it has.
        key = scheme.for_data(pirate).keygen(pirate)
        scheme.continue_training(model, key, pirate, "piracy")
        evidence = scheme.evidence(model, key, pirate)
        return AttackOutcome(
            model=model,
            info={
                "summary": f"pirate's key answered {evidence.successes}/{evidence.trials}",
                "pirate_key": key.fingerprint,
            },
            claim=ClaimAttempt(key, "after-theft"),
        )
