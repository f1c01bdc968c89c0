"""An adaptive removal attack on trigger-set watermarks: find the out-of-distribution
inputs the stolen model answers confidently, and unlearn them.

The attacker knows the scheme family (trigger sets: abstract images or noise with labels
the model must return) and its published parameters, including the generator of its
trigger images, but not the key. A trigger set works because the model gives confident
answers to inputs no clean model has reason to be sure about; the attack finds such
inputs and trains the model to answer them with no preference at all. The scoring is the
feature-distance OOD test of Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018 (class means of the
penultimate features, Euclidean here), and the confidence is the maximum softmax of
Hendrycks and Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
Examples in Neural Networks", ICLR 2017. Unlearning with uniform targets on outliers
follows Hendrycks et al.'s outlier exposure ("Deep Anomaly Detection with Outlier
Exposure", ICLR 2019), applied here to a stolen model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.keys import TriggerKey, abstract_images
from arena.core.models import head_module
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, Requirements, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import predict_logits, train
from attacks.removal.common import EPOCH_GRID, AttackerTraining

MAX_CANDIDATES = 1_000_000  # far above any use; more is a typo, refused before any work


@dataclass(frozen=True)
class AdaptiveOodParams(AttackerTraining):
    candidates: int = param(
        2000, help="candidate inputs drawn and scored", min=1, max=MAX_CANDIDATES
    )
    unlearned: int = param(
        200, help="of the out-of-distribution candidates, the most confidently answered", min=1
    )
    pool: Literal["mixed", "abstract", "noise"] = param(
        "mixed",
        help="candidates: the family's published abstract-image generator, uniform noise, "
        "or half of each",
    )
    quantile: float = param(
        0.99,
        help="a candidate is out of distribution when its feature distance to the nearest "
        "class mean exceeds this quantile of the attacker's own images' distances",
        above=0,
        below=1,
    )

    def check(self) -> None:
        if self.unlearned > self.candidates:
            raise ValueError(
                f"unlearned ({self.unlearned}) cannot exceed candidates ({self.candidates})"
            )


@register_attack("adaptive-ood")
class AdaptiveOod(RemovalAttack):
    """Unlearn the confident out-of-distribution inputs of a trigger-set watermark
    (adaptive: the attacker knows the scheme family, not the key).

    1. Candidates: ``candidates`` inputs, half drawn with the published abstract-image
       generator of the trigger-set schemes (``arena.core.keys.abstract_images``, with
       the attacker's own randomness) and half uniform noise (``pool``).
    2. Scoring: the stolen model's penultimate features (the output layer's input) on
       the attacker's images give one mean per class; each input's OOD score is its
       Euclidean distance to the nearest class mean. A candidate is out of distribution
       when its score exceeds the ``quantile`` of the attacker's images' own scores.
    3. Choice: of those, the ``unlearned`` the model answers most confidently (maximum
       softmax): the inputs where a trigger set's learnt answers would show.
    4. Unlearning: fine-tune every layer on the attacker's split with true labels plus
       the chosen inputs with the uniform distribution as their target (outlier
       exposure), for the protocol's attack budget with the attackers' usual optimizer.

    Defaults: 2,000 candidates, 200 unlearned (as many as the 200 attacker images of
    smoke; a fifth of mnist5k's), the 0.99 quantile (1% of in-distribution images would
    be called outliers), SGD at 0.01 (the attackers' common settings).
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = (
        "adaptive (this arena); Lee et al., NeurIPS 2018; Hendrycks and Gimpel, ICLR 2017; "
        "Hendrycks et al., ICLR 2019"
    )
    Params = AdaptiveOodParams
    requires = Requirements(
        key_type=TriggerKey,
        access=("black-box",),
        reason="it unlearns the confident out-of-distribution answers a trigger set "
        "teaches; a white-box mark lives in the weights, not in those answers",
    )

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        attacker = ctx.splits.attacker
        candidates = self.draw_candidates(ctx)
        choice = choose_outliers(
            model, attacker.images, attacker.labels, candidates, self.params, ctx
        )
        chosen = candidates[choice.chosen]
        classes = ctx.num_classes
        targets = torch.cat(
            [
                F.one_hot(attacker.labels, classes).float(),
                torch.full((len(chosen), classes), 1.0 / classes),
            ]
        )
        report = train(
            model,
            torch.cat([attacker.images, chosen]),
            targets,
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=ctx.generator(f"attack:{self.name}"),
            description="adaptive OOD unlearning",
            progress=ctx.progress,
            augment=ctx.protocol.augment,
        )
        return AttackOutcome(
            model=model,
            info={
                "summary": (
                    f"{len(chosen)} of {len(candidates)} candidates unlearned "
                    f"({choice.outliers} out of distribution)"
                ),
                "candidates": len(candidates),
                "outliers": choice.outliers,
                "unlearned": len(chosen),
                "threshold": choice.threshold,
                "chosen_confidence": choice.chosen_confidence,
                "chosen_distance": choice.chosen_distance,
                "steps": report.steps,
            },
        )

    def draw_candidates(self, ctx: Context) -> torch.Tensor:
        """The candidate inputs (float, [0, 1]), drawn from the attacker's own seed."""
        protocol = ctx.protocol
        rng = ctx.rng(f"attack:{self.name}:candidates")
        count = self.params.candidates
        abstract = {"mixed": count // 2, "abstract": count, "noise": 0}[self.params.pool]
        shape = (count - abstract, protocol.channels, protocol.image_size, protocol.image_size)
        parts = [torch.as_tensor(rng.random(shape), dtype=torch.float32)]
        if abstract:
            drawn = abstract_images(abstract, protocol.image_size, protocol.channels, rng)
            parts.insert(0, torch.as_tensor(drawn, dtype=torch.float32) / 255)
        return torch.cat(parts)


@dataclass(frozen=True)
class OutlierChoice:
    chosen: torch.Tensor  # indices into the candidates, most confident first
    outliers: int  # candidates beyond the threshold
    threshold: float  # the attacker images' distance quantile
    chosen_confidence: float  # mean maximum softmax of the chosen, before unlearning
    chosen_distance: float  # their mean distance to the nearest class mean


def choose_outliers(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    candidates: torch.Tensor,
    params: AdaptiveOodParams,
    ctx: Context,
) -> OutlierChoice:
    """The candidates farther from every class mean of ``images``' features than the
    ``quantile`` of ``images``' own distances, the ``unlearned`` most confident first."""
    features, _ = features_and_logits(model, images, ctx.device)
    means = torch.stack(
        [
            features[labels == c].mean(0) if (labels == c).any() else features.mean(0)
            for c in range(ctx.num_classes)
        ]
    )
    threshold = float(torch.quantile(torch.cdist(features, means).amin(1), params.quantile))
    candidate_features, logits = features_and_logits(model, candidates, ctx.device)
    distance = torch.cdist(candidate_features, means).amin(1)
    confidence = logits.softmax(1).amax(1)
    outliers = torch.nonzero(distance > threshold).flatten()
    order = torch.argsort(confidence[outliers], descending=True, stable=True)
    chosen = outliers[order[: params.unlearned]]
    return OutlierChoice(
        chosen=chosen,
        outliers=len(outliers),
        threshold=threshold,
        chosen_confidence=float(confidence[chosen].mean()) if len(chosen) else 0.0,
        chosen_distance=float(distance[chosen].mean()) if len(chosen) else 0.0,
    )


@torch.no_grad()
def features_and_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate features (what the output layer reads) and the logits."""
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        captured.append(inputs[0].detach().float().flatten(1).cpu())

    handle = head_module(model).register_forward_hook(record)
    try:
        logits = predict_logits(model, images, device)
    finally:
        handle.remove()
    return torch.cat(captured), logits
