"""Serve the stolen model behind a detector of verification queries: a query that looks
unlike the attacker's own data is answered with another label, so the owner's trigger
queries find no mark while ordinary customers are rarely disturbed.

The detector attack of Hitaj and Mancini, "Have You Stolen My Model? Evasion Attacks
Against Deep Neural Network Watermarking Techniques" (arXiv:1809.00615, 2018), and the
query-modification threat of Namba and Sakuma, "Robust Watermarking of Neural Network
with Exponential Weighting" (AsiaCCS 2019), with two detectors from the backdoor and
out-of-distribution literature in place of theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, QueryAttack, QueryFilter, Requirements, ThreatModel
from arena.core.registry import register_attack
from arena.util.errors import ArenaError

if TYPE_CHECKING:
    pass

BATCH = 500  # images per forward pass while fitting


@dataclass(frozen=True)
class DetectorParams:
    detector: Literal["ood", "strip"] = param(
        "ood", help="Mahalanobis distance of the features (Lee et al.), or STRIP (Gao et al.)"
    )
    fpr: float = param(
        0.05, help="share of the attacker's clean images the detector may flag", above=0, below=1
    )
    overlays: int = param(
        20, help="STRIP: clean images superimposed on each query (N in Gao et al.)", min=1
    )


@register_attack("evade-detector")
class EvadeDetector(QueryAttack):
    """Serve the stolen model behind a detector that answers trigger-like queries with the
    runner-up class (the detector attack of Hitaj and Mancini, arXiv:1809.00615, 2018).

    ``detector="ood"`` (default) flags a query whose penultimate features lie far from
    every class of the attacker's clean data: the Mahalanobis score of Lee et al., "A
    Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
    Attacks" (NeurIPS 2018), with class means and one shared covariance (Ledoit-Wolf
    shrunk, since a split of hundreds of images estimates hundreds of dimensions badly).
    Not the max-softmax baseline of Hendrycks and Gimpel (ICLR 2017): a marked model has
    learned its triggers and answers them as confidently as real images, so the
    confidence alone does not tell them apart.

    ``detector="strip"`` is STRIP (Gao et al., "STRIP: A Defence Against Trojan Attacks
    on Deep Neural Networks", ACSAC 2019): ``overlays`` clean images are superimposed on
    each query, and a query whose superimpositions keep a low mean prediction entropy
    (the trigger dominates whatever is added) is flagged. Superimposing adds the two
    images pixel by pixel and clips to [0, 1], as the authors' code does (OpenCV's
    ``addWeighted`` with both weights 1 on 8-bit images, which saturates). It is written
    here rather than taken from ART's ``STRIP``, which averages the two images (halving
    a patch trigger's contrast, so the patch no longer dominates the blend), draws
    its overlays from numpy's global random state (not reproducible from the match
    seed), abstains with an all-zero answer instead of answering, and takes scipy's
    entropy along the blends (axis 0) instead of over the classes of each blend.

    Both fit on the attacker's split after a seeded shuffle: one half fits the class means
    and covariance (``ood``), or the first ``overlays`` images are the overlays
    (``strip``); the rest calibrates the threshold so that a clean query is flagged with
    probability at most ``fpr`` (the conformal rank: the ceil((n+1)(1-fpr))-th smallest of
    n calibration scores, a bound that needs no model of the scores' distribution, where
    ART's STRIP fits a normal one). Defaults: ``ood``; ``fpr`` 0.05, so at most one customer
    query in twenty gets the runner-up answer; 20 overlays (ART's default for STRIP). The
    weights are not changed.
    """

    threat = "evasion"
    paper = (
        "Hitaj and Mancini, arXiv:1809.00615, 2018; Lee et al., NeurIPS 2018; "
        "Gao et al., ACSAC 2019"
    )
    Params = DetectorParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        # Class means need the true labels; STRIP only looks at the images.
        labels = "true" if self.params.detector == "ood" else "none"
        return ThreatModel(data="attacker-split", labels=labels, query_budget=None, epochs=0)

    requires = Requirements(
        access=("black-box",),
        reason="a query filter does not change the weights a white-box verifier reads",
    )

    def prepare(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        """The weights stay as they are; ``info`` describes the fitted detector. Its
        ``threshold`` is the score above which a query is flagged: a squared Mahalanobis
        distance (``ood``) or minus a mean entropy in bits (``strip``)."""
        detector = self.serve(model, ctx)
        bounded = math.isfinite(detector.threshold)
        summary = (
            f"{self.params.detector} detector, calibrated to flag {self.params.fpr:.0%} of clean"
            if bounded
            else f"{detector.calibration_images} calibration images cannot bound fpr "
            f"{self.params.fpr}: nothing is flagged"
        )
        info = {
            "detector": self.params.detector,
            "fpr": self.params.fpr,
            "fit_images": detector.fit_images,
            "calibration_images": detector.calibration_images,
            "threshold": detector.threshold if bounded else None,
            "summary": summary,
        }
        return AttackOutcome(model=model, info=info)

    def serve(self, model: nn.Module, ctx: Context) -> QueryFilter:
        """The detector, refitted from the attacker's split with the same seeded shuffle
        each time: a replayed match rebuilds exactly the detector the match used."""
        model.eval()
        attacker = ctx.splits.attacker
        if self.params.detector == "strip" and self.params.overlays >= len(attacker):
            raise ArenaError(
                f"overlays={self.params.overlays} leaves none of the attacker's "
                f"{len(attacker)} images to calibrate on; use fewer overlays"
            )
        order = torch.randperm(len(attacker), generator=ctx.generator(f"attack:{self.name}"))
        images, labels = attacker.images[order], attacker.labels[order]
        if self.params.detector == "ood":
            half = len(images) // 2
            detector = MahalanobisFilter(model, images[:half], labels[:half], ctx.device)
        else:
            count = self.params.overlays
            detector = StripFilter(model, images[:count], ctx.device)
        detector.calibrate(images[detector.fit_images :], self.params.fpr)
        return detector


class CalibratedFilter(QueryFilter):
    """A filter that flags queries whose ``score`` exceeds a threshold set on clean data."""

    fit_images: int  # attacker images spent fitting the detector
    calibration_images: int  # and calibrating its threshold
    threshold: float

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Suspicion per image: higher looks less like the attacker's clean data."""
        raise NotImplementedError

    def calibrate(self, clean: torch.Tensor, fpr: float) -> None:
        """Set the threshold so that a clean query exchangeable with ``clean`` is flagged
        with probability at most ``fpr`` (infinite when ``clean`` is too small for it)."""
        scores = _batched(self.score, clean)
        rank = math.ceil((len(scores) + 1) * (1 - fpr))
        self.calibration_images = len(scores)
        self.threshold = float(scores.sort().values[rank - 1]) if rank <= len(scores) else math.inf

    def flags(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.score(images) > self.threshold


class MahalanobisFilter(CalibratedFilter):
    """Flags queries far, in penultimate features, from every class of the fitting images:
    the smallest squared Mahalanobis distance to a class mean under a shared covariance."""

    def __init__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
    ) -> None:
        super().__init__(model)
        self.fit_images = len(images)
        features = _batched(lambda batch: self.features(batch.to(device)), images)
        classes = labels.unique()
        means = torch.stack([features[labels == label].mean(dim=0) for label in classes])
        residuals = features - means[torch.searchsorted(classes, labels)]
        self.register_buffer("means", means.to(device))
        self.register_buffer("precision", _shrunk_precision(residuals).to(device))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The input of the output layer, through timm's ``forward_head(pre_logits=True)``."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        # A second pass through the body, after the filter's own: flags() sees only logits.
        offsets = self.features(images.to(self.means.device)).float()[:, None, :] - self.means[None]
        distances = torch.einsum("nkd,de,nke->nk", offsets, self.precision, offsets)
        return distances.min(dim=1).values.cpu()


class StripFilter(CalibratedFilter):
    """Flags queries that keep a low prediction entropy under superimposed clean images.

    The overlays are the same for every query, so a query's answer does not depend on the
    batch it arrives in or on how often it was asked.
    """

    def __init__(self, model: nn.Module, overlays: torch.Tensor, device: torch.device) -> None:
        super().__init__(model)
        self.fit_images = len(overlays)
        self.register_buffer("overlays", overlays.to(device))

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.overlays.device)
        entropy = torch.zeros(len(images), device=images.device)
        for overlay in self.overlays:
            superimposed = (images + overlay).clamp(0.0, 1.0)
            probabilities = F.softmax(self.model(superimposed).float(), dim=1)
            entropy -= (probabilities * torch.log2(probabilities.clamp_min(1e-12))).sum(dim=1)
        return -(entropy / len(self.overlays)).cpu()  # low entropy is the suspicious end


def _batched(
    function: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """``function`` over ``images`` in batches, gathered as float on the CPU."""
    outputs = [function(images[start : start + BATCH]) for start in range(0, len(images), BATCH)]
    return torch.cat([output.float().cpu() for output in outputs])


def _shrunk_precision(residuals: torch.Tensor) -> torch.Tensor:
    """The inverse of the Ledoit-Wolf shrunk covariance of class-centred features."""
    from sklearn.covariance import LedoitWolf

    estimate = LedoitWolf(assume_centered=True).fit(residuals.cpu().double().numpy())
    return torch.as_tensor(estimate.precision_, dtype=torch.float32)
