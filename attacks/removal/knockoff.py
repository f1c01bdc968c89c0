"""Knockoff Nets: Orekondy, Schiele and Fritz, "Knockoff Nets: Stealing Functionality of
Black-Box Models", CVPR 2019 (https://arxiv.org/abs/1812.02766), through ART's
``KnockoffNets``; a removal attack on watermarks in Lukas et al., "SoK: How Robust is
Image Classification Deep Neural Network Watermarking?", IEEE S&P 2022.

The victim is a black box that answers probabilities; a fresh thief learns its answers on
query images the attacker picks at random, from its own split or from natural photographs
that are nothing like the protocol's data.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.estimators import art_classifier
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.protocols import Protocol
from arena.core.registry import register_attack
from arena.core.training import TrainSettings, make_optimizer
from arena.util.errors import ArenaError
from attacks.removal.common import EPOCH_GRID, MAX_EPOCHS, ScratchTraining, fresh_model


@dataclass(frozen=True)
class KnockoffParams(ScratchTraining):
    # At least 1: ART's KnockoffNets refuses 0 epochs mid-match; refused here instead.
    epochs: int | None = param(
        None,
        help="training epochs; None: the owner's from-scratch budget (the protocol's)",
        min=1,
        max=MAX_EPOCHS,
    )
    nb_stolen: int | None = param(
        None, help="victim queries; None: one per attacker-split image", min=1
    )
    use_probability: bool = param(
        False, help="learn the victim's probabilities, not its top-1 answers"
    )
    data: Literal["attacker-split", "ood"] = param(
        "attacker-split",
        help="the images queried: the attacker's split, or crops of natural photographs",
    )


@register_attack("knockoff")
class Knockoff(RemovalAttack):
    """Knockoff Nets with random sampling (Orekondy et al., CVPR 2019), by ART.

    ART's ``KnockoffNets`` (``sampling_strategy="random"``) draws ``nb_stolen`` query
    images without replacement, asks the victim once for each (top-1 one-hot answers, or
    its probabilities with ``use_probability``) and fits a freshly initialised thief of
    the victim's architecture on them: ART's ``fit`` with the attacker's optimizer and
    cosine schedule, ``epochs`` as ``nb_epochs`` and ``batch_size`` as ``batch_size_fit``.

    ``data="attacker-split"``: the attacker's own images, labels unused. ``data="ood"``:
    random square crops (1/8 to 1/2 of the short side) of the two photographs that ship
    with scikit-learn (``load_sample_images``), at the protocol's size and channels: the
    paper's natural-image transfer set in miniature, and out of distribution for digits.
    Defaults: one query per attacker-split image, top-1 answers, the owner's from-scratch
    epochs, SGD at 0.1 (ART's own defaults, one epoch of batch 1, are far slower).
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Orekondy et al., CVPR 2019; Lukas et al., IEEE S&P 2022"
    Params = KnockoffParams
    holds_weights = False  # it needs only the victim's answers to its queries

    def queries(self, ctx: Context) -> int:
        pool = len(ctx.splits.attacker)
        if self.params.nb_stolen is None:
            return pool
        if self.params.data == "attacker-split" and self.params.nb_stolen > pool:
            raise ArenaError(
                f"attack {self.name!r}: nb_stolen={self.params.nb_stolen} exceeds the {pool} "
                "images of the attacker's split; lower it or use data=ood"
            )
        return self.params.nb_stolen

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="unlabeled" if self.params.data == "attacker-split" else "out-of-distribution",
            labels="victim-soft" if self.params.use_probability else "victim-top1",
            query_budget=self.queries(ctx),
            epochs=self.params.budget(ctx),
        )

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        from art.attacks.extraction import KnockoffNets as ArtKnockoffNets

        count = self.queries(ctx)
        rng = ctx.rng(f"attack:{self.name}")
        if self.params.data == "ood":
            pool = natural_crops(count, ctx.protocol, rng)
        else:
            pool = ctx.splits.attacker.images
        # The deployed black box answers probabilities, so use_probability gets them.
        black_box = art_classifier(
            nn.Sequential(model, nn.Softmax(dim=1)), ctx.protocol, ctx.device
        )
        thief = fresh_model(ctx, None, f"attack:{self.name}:thief")
        settings = self.params.settings(self.params.budget(ctx))
        optimizer = _scheduled_optimizer(thief, settings, count)
        attack = ArtKnockoffNets(
            black_box,
            batch_size_fit=settings.batch_size,
            batch_size_query=256,
            nb_epochs=settings.epochs,
            nb_stolen=count,
            sampling_strategy="random",
            verbose=False,
            use_probability=self.params.use_probability,
        )
        with _seeded(int(rng.integers(2**31))):
            attack.extract(
                pool.numpy(),
                thieved_classifier=art_classifier(thief, ctx.protocol, ctx.device, optimizer),
            )
        thief.eval()
        return AttackOutcome(model=thief, info={"queries": count, "data": self.params.data})


def natural_crops(count: int, protocol: Protocol, rng: np.random.Generator) -> torch.Tensor:
    """``count`` random square crops of scikit-learn's two sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427 x 640 RGB photographs, uint8
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        short = min(photo.shape[:2])
        side = int(rng.integers(short // 8, short // 2 + 1))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = torch.from_numpy(photo[top : top + side, left : left + side].copy())
        crops.append(
            to_model_input(crop.permute(2, 0, 1)[None], protocol.image_size, protocol.channels)
        )
    return torch.cat(crops)


def _scheduled_optimizer(
    model: nn.Module, settings: TrainSettings, examples: int
) -> torch.optim.Optimizer:
    """The attacker's optimizer with its cosine schedule stepped after every update: ART's
    ``fit`` takes no per-step schedule, and a constant rate ends on a noisy model."""
    optimizer = make_optimizer(list(model.parameters()), settings)
    steps = settings.epochs * -(-examples // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    optimizer.register_step_post_hook(lambda *_: scheduler.step())
    return optimizer


@contextlib.contextmanager
def _seeded(seed: int):
    # ART samples queries from numpy's global generator and shuffles batches with torch's:
    # seed both for the attack, then restore them.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)
