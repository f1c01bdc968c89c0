"""Serve a vote of the stolen model and models the attacker retrained on its answers: the
ensemble attack as described in Hitaj and Mancini, "Have You Stolen My Model? Evasion
Attacks Against Deep Neural Network Watermarking Techniques" (arXiv:1809.00615, 2018),
where no single marked model decides the answer to a query.

Here the other voters are extracted from the stolen model itself (retraining on its top-1
labels, Tramèr et al., "Stealing Machine Learning Models via Prediction APIs", USENIX
Security 2016), so they learn the task but not the trigger labels, which no ordinary
image carries over. On ordinary queries the voters mostly agree with the stolen model;
on a trigger the stolen model is the one voter that gives the owner's label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, QueryAttack, Requirements, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import predict
from attacks.removal.common import (
    EXTRACTION_PURPOSE,
    ScratchTraining,
    reused_seconds,
    train_fresh,
)

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class EnsembleParams(ScratchTraining):
    members: int = param(2, help="retrained models voting beside the stolen one", min=1)


@register_attack("evade-ensemble")
class EvadeEnsemble(QueryAttack):
    """Serve the mean vote of the stolen model and ``members`` models retrained on its
    labels (the ensemble attack as described in Hitaj and Mancini, arXiv:1809.00615, 2018).

    The attacker queries the stolen model once per image of its split, keeps the top-1
    answers, and trains ``members`` freshly initialised models of the victim's
    architecture on them, each from its own seed and data order, with its own optimizer
    (as ``retrain`` does; the first member is the very model ``retrain`` extracts, which a
    sweep therefore trains once for both attacks). The served answer is the class of
    highest mean softmax probability over all voters (soft voting), returned as the log
    of the mean probabilities: unlike a majority of top-1 votes it has no ties to break among three
    voters that all disagree, and a confident correct voter outweighs unsure wrong ones,
    which keeps more test accuracy. The threat model's epochs count every member's passes
    over the attacker's split. Defaults: 2 members (the smallest ensemble in which the
    retrained models can outvote a confident stolen model when they agree), the owner's
    from-scratch epochs, SGD at 0.1 (``retrain``'s defaults).
    """

    threat = "evasion"
    paper = "Hitaj and Mancini, arXiv:1809.00615, 2018; Tramèr et al., USENIX Security 2016"
    Params = EnsembleParams
    version = "2"  # 2: the first member is retrain's model (1: a seed of its own)

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="attacker-split",
            labels="victim-top1",
            query_budget=len(ctx.splits.attacker),
            epochs=self.params.members * self.params.budget(ctx),
        )

    requires = Requirements(
        access=("black-box",),
        reason="serving an ensemble does not change the weights a white-box verifier reads",
    )

    def build(self, ctx: Context, new_model: Callable[[], nn.Module]) -> nn.Module:
        return Ensemble([new_model() for _ in range(self.params.members + 1)])

    def serve(self, model: nn.Module, ctx: Context) -> nn.Module:
        """The ensemble ``prepare`` trained answers the queries itself."""
        return model

    def prepare(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        images = ctx.splits.attacker.images
        labels = predict(model, images, ctx.device)
        members, reports = [], []
        for index in range(self.params.members):
            # The first member is the very model ``retrain`` extracts (its seed, data and
            # optimizer): a sweep trains it once for both attacks.
            purpose = EXTRACTION_PURPOSE if index == 0 else f"attack:{self.name}:member{index}"
            member, report = train_fresh(
                ctx,
                None,
                purpose,
                (images, labels),
                self.params.settings(self.params.budget(ctx)),
                f"retraining ensemble member {index + 1} on the victim's labels",
                augment=ctx.protocol.augment,
            )
            members.append(member)
            reports.append(report)
        return AttackOutcome(
            model=Ensemble([model, *members]),
            info={
                "summary": (
                    f"mean softmax of the stolen model and {len(members)} models retrained"
                    f" on its labels for {len(images)} queries"
                ),
                "members": len(members),
                "steps": sum(report.steps for report in reports),
                "queries": len(images),
                **reused_seconds(*reports),
            },
        )


class Ensemble(nn.Module):
    """Models that answer together: the log of their mean softmax probabilities.

    The log keeps the output a proper log-probability, so anything that applies a softmax
    to the served answers gets the mean probabilities back.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.voters = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probabilities = torch.stack(
            [F.log_softmax(voter(images).float(), dim=1) for voter in self.voters]
        )
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(self.voters))
