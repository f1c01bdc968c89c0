"""Watermark overwriting: the attacker embeds a trigger-set mark of its own into the stolen
model, hoping to wash out the owner's. Adi et al., "Turning Your Weakness Into a Strength",
USENIX Security 2018 (ownership piracy, Section 5.3), and Lukas et al., "SoK: How Robust
is Image Classification Deep Neural Network Watermarking?", IEEE S&P 2022 ("overwriting").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from arena.context import Context
from arena.data import to_model_input
from arena.plugin import Attack, AttackOutcome, ThreatModel
from arena.registry import register_attack
from arena.training import predict, train
from attacks.removal.common import AttackerTraining
from defenses.trigger_set import abstract_trigger_set


@dataclass(frozen=True)
class OverwriteParams(AttackerTraining):
    trigger_size: int | None = None  # the attacker's trigger count; None: the protocol's
    triggers_per_batch: int | None = None  # None: the protocol's

    def check(self) -> None:
        super().check()
        if self.trigger_size is not None and self.trigger_size < 1:
            raise ValueError(f"trigger_size must be >= 1, got {self.trigger_size}")
        if self.triggers_per_batch is not None and self.triggers_per_batch < 1:
            raise ValueError(f"triggers_per_batch must be >= 1, got {self.triggers_per_batch}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


@register_attack("overwrite")
class Overwrite(Attack):
    """Overwrite the owner's mark with the attacker's own (Adi et al., USENIX Security 2018;
    Lukas et al., IEEE S&P 2022).

    The attacker draws a fresh key of ``backdoor-wm``'s kind (abstract images with uniformly
    random labels) from a seed of its own, and fine-tunes every layer on its split with
    ``triggers_per_batch`` of its triggers appended to every batch, as the owner marked
    the model. ``info`` reports how many of the attacker's triggers the attacked model
    answers with the attacker's labels.
    """

    paper = "Adi et al., USENIX Security 2018; Lukas et al., IEEE S&P 2022"
    Params = OverwriteParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        epochs = self.params.budget(ctx)
        return ThreatModel(data="attacker-split", labels="true", epochs=epochs)

    def attacker_triggers(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """The attacker's own trigger images (model inputs) and labels."""
        seed = int(ctx.rng(f"attack:{self.name}").integers(2**62))
        attacker_ctx = dataclasses.replace(ctx, seed=seed)  # its keygen stream, not the owner's
        size = self.params.trigger_size or ctx.protocol.trigger_size
        images, labels = abstract_trigger_set(attacker_ctx, size, None)
        inputs = to_model_input(images, ctx.protocol.image_size, ctx.protocol.channels)
        return inputs, torch.as_tensor(labels)

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        attacker = ctx.splits.attacker
        triggers = self.attacker_triggers(ctx)
        report = train(
            model,
            attacker.images,
            attacker.labels,
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=ctx.generator(f"attack:{self.name}"),
            description="overwrite",
            progress=ctx.progress,
            triggers=triggers,
            triggers_per_batch=self.params.triggers_per_batch or ctx.protocol.triggers_per_batch,
            augment=ctx.protocol.augment,
        )
        answers = predict(model, triggers[0], ctx.device)
        agreement = int((answers == triggers[1]).sum())
        return AttackOutcome(
            model=model,
            info={
                "summary": f"attacker's own key answered {agreement}/{len(answers)}",
                "attacker_key_agreement": agreement / len(answers),
                "attacker_key_successes": agreement,
                "attacker_key_trials": len(answers),
                "steps": report.steps,
            },
        )
