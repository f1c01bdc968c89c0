"""Knowledge distillation as a removal attack: Hinton, Vinyals and Dean, "Distilling the
Knowledge in a Neural Network", arXiv:1503.02531, 2015; evaluated against watermarks by
Lukas et al., "SoK: How Robust is Image Classification Deep Neural Network Watermarking?",
IEEE S&P 2022.

A fresh student learns the victim's softened outputs on the attacker's own images. Only
what the victim shows on those images is passed on; the trigger set is never queried.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import predict_logits
from attacks.removal.common import EPOCH_GRID, ScratchTraining, train_fresh


@dataclass(frozen=True)
class DistillParams(ScratchTraining):
    temperature: float = param(4.0, help="T: softens teacher and student outputs alike", above=0)


@register_attack("distill")
class Distillation(RemovalAttack):
    """Knowledge distillation into a fresh student (Hinton et al. 2015; Lukas et al.,
    IEEE S&P 2022).

    The victim (teacher) is queried once per image of the attacker's split; its logits
    divided by ``temperature`` give soft labels, and a freshly initialised student of the
    same architecture minimises T^2 times the cross-entropy to them at the same
    temperature (the KL divergence up to a constant), as Hinton et al. prescribe. The
    attacker's own labels are not used: the victim is the only teacher. No augmentation,
    since each image's soft label was queried for that image as it is.

    Defaults: T = 4 (Hinton et al. report T from 2.5 to 4 working best on MNIST-sized
    students); the owner's from-scratch epochs; SGD at 0.1.
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Hinton, Vinyals and Dean, arXiv:1503.02531 (2015); Lukas et al., IEEE S&P 2022"
    Params = DistillParams
    holds_weights = False  # it needs only the victim's answers to its queries

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="unlabeled",
            labels="victim-soft",
            query_budget=len(ctx.splits.attacker),
            epochs=self.params.budget(ctx),
        )

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        images = ctx.splits.attacker.images
        temperature = self.params.temperature
        soft_labels = torch.softmax(predict_logits(model, images, ctx.device) / temperature, 1)
        student, report = train_fresh(
            ctx,
            None,
            f"attack:{self.name}:student",
            (images, soft_labels),
            self.params.settings(self.params.budget(ctx)),
            "distillation",
            generator_purpose=f"attack:{self.name}",
            temperature=temperature,
        )
        return AttackOutcome(model=student, info={"steps": report.steps, "queries": len(images)})
