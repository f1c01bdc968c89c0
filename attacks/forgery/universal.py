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

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import (
    AttackOutcome,
    ClaimAttack,
    ClaimAttempt,
    ThreatModel,
)
from arena.core.registry import register_attack
from attacks.forgery.common import TRIGGER_SET_KEYS, claim_key


@dataclass(frozen=True)
class UniversalParams:
    kind: Literal["true-labels", "prototype"] = param(
        "true-labels",
        help="own images with their true labels, or noisy copies of one class's mean image",
    )
    trigger_size: int | None = param(
        None, help="triggers in the forged key; None: the protocol's", min=1
    )
    noise: float = param(
        0.1, help='"prototype": std of the noise that makes the copies differ', min=0, max=1
    )


@register_attack("forge-universal")
class ForgeUniversal(ClaimAttack):
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

    requires = TRIGGER_SET_KEYS

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=0)

    def claim(self, model: nn.Module, ctx: Context) -> AttackOutcome:
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
