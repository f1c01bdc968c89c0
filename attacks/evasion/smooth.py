"""Median smoothing of every query (Xu et al., "Feature Squeezing", NDSS 2018) with ART's
``SpatialSmoothing``, as an evasion of trigger-set verification."""

from __future__ import annotations

from dataclasses import dataclass

from arena.core.params import param
from arena.core.plugin import Budget
from arena.core.registry import register_attack
from attacks.evasion.transform import InputTransformAttack


@dataclass(frozen=True)
class SmoothParams:
    window_size: int = param(3, help="side of the median filter's square window, in pixels", min=1)


@register_attack("smooth")
class SpatialSmoothingAttack(InputTransformAttack):
    """Serve the stolen model behind a median filter over every input (Xu et al., "Feature
    Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018).

    Each channel of each query is median-filtered in a ``window_size`` square (ART's
    ``SpatialSmoothing``, reflected borders); the weights are not changed. Default 3.
    """

    budget_curve = Budget("window_size", (2, 3, 5, 7))

    paper = "Xu et al., NDSS 2018"
    Params = SmoothParams

    def preprocessor(self):
        from art.defences.preprocessor import SpatialSmoothing

        return SpatialSmoothing(
            window_size=self.params.window_size, channels_first=True, clip_values=(0.0, 1.0)
        )
