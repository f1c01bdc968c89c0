"""Bit-depth reduction of every query (Xu et al., "Feature Squeezing", NDSS 2018) with ART's
``FeatureSqueezing``, as an evasion of trigger-set verification."""

from __future__ import annotations

from dataclasses import dataclass

from arena.core.params import param
from arena.core.plugin import Budget
from arena.core.registry import register_attack
from attacks.evasion.transform import InputTransformAttack


@dataclass(frozen=True)
class SqueezeParams:
    bit_depth: int = param(
        3, help="bits per channel kept; 1 makes every pixel black or white", min=1, max=8
    )


@register_attack("squeeze")
class FeatureSqueezingAttack(InputTransformAttack):
    """Serve the stolen model behind colour-depth reduction of every input (Xu et al.,
    "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018).

    Every pixel value in [0, 1] is rounded to one of ``2**bit_depth`` levels (ART's
    ``FeatureSqueezing``); the weights are not changed. Default 3 bits (8 levels), between
    the paper's settings for MNIST (1 bit) and CIFAR-10 (5 bits).
    """

    budget_curve = Budget("bit_depth", (6, 5, 4, 3, 2, 1))

    paper = "Xu et al., NDSS 2018"
    Params = SqueezeParams

    def preprocessor(self):
        from art.defences.preprocessor import FeatureSqueezing

        return FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=self.params.bit_depth)
