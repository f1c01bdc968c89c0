"""Universal forgery: a key fixed in advance that models it never saw would answer.
Adi et al., "Turning Your Weakness Into a Strength", USENIX Security 2018, Section 3
(non-trivial ownership: no key fixed in advance may claim models its maker never saw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from arena.context import Context
from arena.keys import TriggerKey
from arena.plugin import Attack, AttackOutcome, ClaimAttempt, Defense, ThreatModel
from arena.registry import register_attack
from attacks.forgery.common import claim_key


@dataclass(frozen=True)
class UniversalParams:
    kind: Literal["true-labels", "prototype"] = "true-labels"
    trigger_size: int | None = None  # None: the protocol's
    noise: float = 0.1  # "prototype": std of the noise that makes the copies differ

    def check(self) -> None:
        if self.kind not in ("true-labels", "prototype"):
            raise ValueError(f"kind must be 'true-labels' or 'prototype', got {self.kind!r}")
        if self.trigger_size is not None and self.trigger_size < 1:
            raise ValueError(f"trigger_size must be >= 1, got {self.trigger_size}")
        if not 0 <= self.noise <= 1:
            raise ValueError(f"noise must lie in [0, 1], got {self.noise}")


@register_attack("forge-universal")
class ForgeUniversal(Attack):
    """Claim models never seen with a key any good model answers (non-trivial ownership).

    The attacker fixes its key before the owner publishes anything and registers it at
    once, so ledger order is on its side. It needs a key that independently trained
    models agree with: ``kind="true-labels"`` takes images of its own data with their true
    labels; ``kind="prototype"`` takes one class's mean image (over its own data) in noisy
    copies, all labelled with that class. Either is answered far above chance by any
    accurate model. The arena judges the claim on the owner's model and tries the same
    key on the protocol's independent clean reference models; the public label check
    (clean models must not agree with a key's labels) is what should reject it.
    """

    threat = "forgery"
    paper = "Adi et al., USENIX Security 2018 (non-trivial ownership)"
    Params = UniversalParams

    def applies_to(self, defense: Defense) -> str | None:
        if not issubclass(defense.key_type, TriggerKey):
            return "its keys are bit strings of a white-box scheme, not trigger sets"
        return None

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=0)

    def run(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        rng = ctx.rng(f"attack:{self.name}")
        size = self.params.trigger_size or ctx.protocol.trigger_size
        attacker = ctx.splits.attacker
        if self.params.kind == "true-labels":
            chosen = rng.choice(len(attacker), size, replace=len(attacker) < size)
            images, labels = attacker.images[chosen], attacker.labels[chosen].numpy()
        else:
            images, labels = _prototype_copies(
                attacker.images, attacker.labels, size, self.params.noise, rng
            )
        key = claim_key(ctx, _to_uint8(images), labels, rng)
        return AttackOutcome(
            model=model,  # the attacker never touches the model it claims
            info={"summary": f"{self.params.kind} key of {size}, registered in advance"},
            claim=ClaimAttempt(key, "in-advance"),
        )


def _prototype_copies(
    images: torch.Tensor, labels: torch.Tensor, count: int, noise: float, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    """``count`` noisy copies of the mean image of one randomly chosen class."""
    present = torch.unique(labels).numpy()
    target = int(rng.choice(present))
    prototype = images[labels == target].mean(dim=0)
    jitter = torch.as_tensor(rng.normal(0.0, noise, (count, *prototype.shape)), dtype=torch.float32)
    return (prototype + jitter).clamp(0, 1), np.full(count, target, dtype=np.int64)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
