"""Forgery with adversarial examples: a trigger set crafted for the stolen model after the
fact. Adi et al., "Turning Your Weakness Into a Strength", USENIX Security 2018, Section 3
(non-trivial ownership and unforgeability). Targeted L-infinity PGD from ART, at Madry et
al.'s MNIST budget ("Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.estimators import art_classifier, input_gradients_only
from arena.core.params import param
from arena.core.plugin import (
    AttackOutcome,
    ClaimAttack,
    ClaimAttempt,
    ThreatModel,
)
from arena.core.registry import register_attack
from arena.core.training import predict
from attacks.forgery.common import TRIGGER_SET_KEYS, claim_key


@dataclass(frozen=True)
class AdversarialParams:
    # Madry et al.'s MNIST adversary: radius 0.3 on [0, 1] pixels, 40 steps of 0.01.
    eps: float = param(
        0.3,
        help="largest L-infinity radius of a trigger around its source image, inputs in [0, 1]",
        above=0,
        max=1,
    )
    eps_step: float = param(
        0.01,
        help="PGD step at radius eps, at most eps; smaller radii scale it down alike",
        above=0,
    )
    max_iter: int = param(40, help="PGD steps per radius", min=1)
    levels: int = param(
        3, help="radii tried in turn, each double the last: eps/4, eps/2, eps", min=1
    )
    trigger_size: int | None = param(
        None, help="triggers in the forged key; None: the protocol's", min=1
    )
    batch_size: int = param(128, help="images per PGD batch", min=1)

    def check(self) -> None:
        if self.eps_step > self.eps:
            raise ValueError(f"eps_step must lie in (0, eps={self.eps}], got {self.eps_step}")

    def radii(self) -> list[float]:
        """The budget ladder, smallest first, ending at ``eps``."""
        return [self.eps / 2**level for level in reversed(range(self.levels))]


@register_attack("forge-adversarial")
class ForgeAdversarial(ClaimAttack):
    """Claim the stolen model with a trigger set of targeted adversarial examples.

    Adi et al. (Section 3) ask that nobody but the owner can produce a key the model
    answers (unforgeability) and that no key claims models its maker never saw
    (non-trivial ownership). A thief holding the weights has an easy route to the first
    half: adversarial examples. It takes images of its own split, draws for each a target
    uniformly among the classes the stolen model does not already give it, and pushes
    the image toward its target with targeted L-infinity PGD (ART's
    ``ProjectedGradientDescent``, white-box gradients of the stolen model, no random
    start). Keys store uint8 images, so each trigger is quantized and re-checked; a
    trigger the model no longer answers with its target is crafted again at twice the
    radius, up to ``eps``, so the perturbation stays as small as the model allows.

    The model does answer such a key, and its labels look like an honest key's (clean
    models do not predict them), so the opening, agreement and label checks pass. What
    rejects the claim is ledger order: the key can only be made after the model was
    seen, so it is registered after the owner's model, and the arena says so. The arena
    also tries the key on independent clean models: adversarial examples crafted for
    one model mostly do not transfer to others, so it claims few of them.
    """

    threat = "forgery"
    paper = "Adi et al., USENIX Security 2018 (non-trivial ownership, unforgeability)"
    Params = AdversarialParams

    requires = TRIGGER_SET_KEYS

    def threat_model(self, ctx: Context) -> ThreatModel:
        # The attacker holds the stolen weights: gradients and answers cost no queries.
        return ThreatModel(data="attacker-split", labels="none", query_budget=None, epochs=0)

    def claim(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        rng = ctx.rng(f"attack:{self.name}")
        size = self.params.trigger_size or ctx.protocol.trigger_size
        attacker = ctx.splits.attacker
        sources = attacker.images[rng.choice(len(attacker), size, replace=len(attacker) < size)]
        answers = predict(model, sources, ctx.device).numpy()
        # A shift in 1..|L|-1 makes the target uniform over the classes other than the answer.
        targets = (answers + rng.integers(1, ctx.num_classes, size)) % ctx.num_classes
        started = time.perf_counter()
        images, radii = self._craft(model, sources, targets, ctx)
        seconds = time.perf_counter() - started
        answered = int((_answers(model, images, ctx) == targets).sum())
        key = claim_key(ctx, images, targets, rng)
        distance = (torch.as_tensor(images).float() / 255 - sources).abs().amax(dim=(1, 2, 3))
        return AttackOutcome(
            model=model,  # the weights are left as stolen
            info={
                "summary": f"forged key answered {answered}/{size} by the stolen model",
                "forged_key": key.fingerprint,
                "agreement": answered / size,
                "triggers_per_radius": _count_radii(radii, self.params.radii()),
                "max_linf": float(distance.max()),
                "mean_linf": float(distance.mean()),
                "crafting_seconds": seconds,
            },
            claim=ClaimAttempt(key, "after-theft"),
        )

    def _craft(
        self, model: nn.Module, sources: torch.Tensor, targets: np.ndarray, ctx: Context
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 triggers, and the radius at which each was answered with its target after
        quantization (NaN: not even at ``eps``; it keeps its attempt at ``eps``)."""
        images = _quantize(sources)
        radii = np.full(len(sources), np.nan)
        pending = np.arange(len(sources))
        for radius in self.params.radii():
            step = self.params.eps_step * radius / self.params.eps
            adversarial = _targeted_pgd(
                model, sources[pending], targets[pending], radius, step, self.params, ctx
            )
            images[pending] = _quantize(adversarial)
            hit = _answers(model, images[pending], ctx) == targets[pending]
            radii[pending[hit]] = radius
            pending = pending[~hit]
            if len(pending) == 0:
                break
        return images, radii


def _targeted_pgd(
    model: nn.Module,
    images: torch.Tensor,
    targets: np.ndarray,
    radius: float,
    step: float,
    params: AdversarialParams,
    ctx: Context,
) -> torch.Tensor:
    """Targeted L-infinity PGD toward ``targets`` within ``radius``, from the images themselves."""
    from art.attacks.evasion import ProjectedGradientDescent

    attack = ProjectedGradientDescent(
        art_classifier(model, ctx.protocol, ctx.device),
        norm=np.inf,
        eps=radius,
        eps_step=step,
        max_iter=params.max_iter,
        targeted=True,
        num_random_init=0,  # deterministic, and no draw from numpy's global generator
        batch_size=params.batch_size,
        verbose=False,
    )
    with input_gradients_only(model):
        return torch.as_tensor(attack.generate(images.numpy(), y=targets))


def _quantize(images: torch.Tensor) -> np.ndarray:
    """What a key stores: uint8 pixels."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _answers(model: nn.Module, images: np.ndarray, ctx: Context) -> np.ndarray:
    """The model's answers to uint8 triggers, read the way verification reads them."""
    inputs = to_model_input(images, ctx.protocol.image_size, ctx.protocol.channels)
    return predict(model, inputs, ctx.device).numpy()


def _count_radii(radii: np.ndarray, ladder: list[float]) -> dict[str, int]:
    counts = {f"{radius:.4g}": int((radii == radius).sum()) for radius in ladder}
    counts["not reached"] = int(np.isnan(radii).sum())
    return counts
