"""Ownership piracy: Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep
Neural Networks by Backdooring", USENIX Security 2018, Section 5.3.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from arena.context import Context
from arena.data import Splits
from arena.errors import ArenaError
from arena.plugin import Attack, AttackOutcome, ClaimAttempt, Defense, Key, ThreatModel
from arena.registry import register_attack
from defenses.trigger_set import TriggerSetDefense, with_budget
from defenses.zhang import SourceClassParams, ZhangDefense


@register_attack("piracy")
class Piracy(Attack):
    """Implant the attacker's own key of the victim's scheme, register it, claim the model.

    The seed paper's ownership-piracy experiment: the attacker, who knows the scheme (its
    verification key names it) but not the owner's key, samples a key of its own with the
    same scheme and configuration and embeds it into the stolen model on its own data, as
    the scheme's pretrained Mark does: trigger-set schemes continue training with the
    attacker's triggers in every batch (the protocol's ``mark_*`` budget); white-box
    schemes continue training with their regularizer on the attacker's key, for the same
    budget. The attacker registers its key after it stole the model and before it
    publishes the pirated one, and claims it. The arena then settles the dispute with
    the ownership protocol (``arena.claims``): the piracy succeeds only if the owner's
    claim cannot be told from the pirate's.
    """

    threat = "piracy"
    paper = "Adi et al., USENIX Security 2018 (Section 5.3)"

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=ctx.protocol.mark_epochs)

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        scheme: Defense | None = ctx.victim_scheme
        if scheme is None:
            raise ArenaError("piracy needs the victim's scheme (a match sets ctx.victim_scheme)")
        pirate = attacker_context(ctx, self.name, model)
        key = attacker_keygen(scheme, pirate)
        if isinstance(scheme, TriggerSetDefense):
            scheme.continue_training(model, key, pirate, "piracy")
        else:
            protocol = pirate.protocol
            budget = with_budget(protocol.training, protocol.mark_epochs, protocol.mark_lr)
            scheme.mark(
                model,
                key,
                dataclasses.replace(
                    pirate, protocol=dataclasses.replace(protocol, training=budget)
                ),
            )
        evidence = scheme.evidence(model, key, pirate)
        return AttackOutcome(
            model=model,
            info={
                "summary": f"pirate's key answered {evidence.successes}/{evidence.trials}",
                "pirate_key": key.fingerprint,
            },
            claim=ClaimAttempt(key, "after-theft"),
        )


def attacker_context(ctx: Context, purpose: str, stolen: nn.Module) -> Context:
    """The attacker's own world: its seed, its data split in the owner's place, and the
    stolen model where a scheme asks for the clean model (frontier stitching)."""
    splits = ctx.splits
    seed = int(ctx.rng(f"attack:{purpose}:keygen").integers(2**62))
    return dataclasses.replace(
        ctx,
        seed=seed,
        _splits=Splits(owner=splits.attacker, attacker=splits.attacker, test=splits.test),
        clean_provider=lambda: stolen,
    )


def attacker_keygen(scheme: Defense, attacker: Context) -> Key:
    """A key of ``scheme`` drawn in the attacker's world. A scheme that stamps images of one
    source class (Zhang et al.) gets as many triggers as the attacker's split holds images
    of that class when that is fewer than the scheme's configured count: the attacker's
    data is all it has."""
    if isinstance(scheme, ZhangDefense) and isinstance(scheme.params, SourceClassParams):
        source = scheme.params.source_class
        available = int((attacker.splits.owner.labels == source).sum())
        if available < scheme.trigger_count(attacker):
            scheme = type(scheme)({**scheme.params_dict(), "trigger_size": available})
    return scheme.keygen(attacker)
