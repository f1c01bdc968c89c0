"""Model extraction by relabelling: train a fresh model on the victim's top-1 answers to the
attacker's own images (Tramèr et al., "Stealing Machine Learning Models via Prediction
APIs", USENIX Security 2016; the retraining attack of Lukas et al., "SoK: How Robust is
Image Classification Deep Neural Network Watermarking?", IEEE S&P 2022).

The fresh model may be of another timm architecture. A trigger-set mark survives only as
far as the victim's answers on ordinary images carry it over.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import predict
from attacks.removal.common import (
    EPOCH_GRID,
    EXTRACTION_PURPOSE,
    ScratchTraining,
    reused_seconds,
    train_fresh,
)


@dataclass(frozen=True)
class RetrainParams(ScratchTraining):
    model: str | None = param(None, help="timm architecture of the fresh model; None: the victim's")

    def check(self) -> None:
        if self.model is not None:
            import timm

            if not timm.is_model(self.model):
                close = difflib.get_close_matches(self.model, timm.list_models(), n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ValueError(
                    f"model {self.model!r} is not a timm model; {hint}(timm.list_models())"
                )


@register_attack("retrain")
class Retrain(RemovalAttack):
    """Retraining from scratch on the victim's labels (Tramèr et al., USENIX Security
    2016; Lukas et al., IEEE S&P 2022).

    The attacker queries the victim once per image of its split, keeps the top-1 answers
    and discards its own labels, then trains a freshly initialised model (``model``: the
    victim's architecture or any other timm model) on those answers with its own optimizer
    and the protocol's augmentation. Defaults: the owner's from-scratch epochs, SGD at 0.1.
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Tramèr et al., USENIX Security 2016; Lukas et al., IEEE S&P 2022"
    Params = RetrainParams
    holds_weights = False  # it needs only the victim's answers to its queries

    def architecture(self, ctx: Context) -> str | None:
        return self.params.model

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="unlabeled",
            labels="victim-top1",
            query_budget=len(ctx.splits.attacker),
            epochs=self.params.budget(ctx),
        )

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        images = ctx.splits.attacker.images
        labels = predict(model, images, ctx.device)
        fresh, report = train_fresh(
            ctx,
            self.params.model,
            EXTRACTION_PURPOSE,
            (images, labels),
            self.params.settings(self.params.budget(ctx)),
            "retraining on the victim's labels",
            augment=ctx.protocol.augment,
        )
        info = {"steps": report.steps, "queries": len(images), **reused_seconds(report)}
        return AttackOutcome(model=fresh, info=info)
