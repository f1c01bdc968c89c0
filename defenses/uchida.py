"""Uchida et al., "Embedding Watermarks into Deep Neural Networks", ICMR 2017.
https://doi.org/10.1145/3078971.3078974 (arXiv:1701.04082)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import ExtraLoss
from defenses.white_box import (
    WhiteBoxDefense,
    WhiteBoxKey,
    filter_projection,
    projected_filter_bits,
    projected_filter_loss,
)


@dataclass(frozen=True)
class UchidaParams:
    layer: str | None = param(
        None,
        help="a Conv2d's module path such as layer2.0.conv2; None: chosen from the model",
    )
    bits: int = param(256, help="T, the paper's 256", min=1)
    strength: float = param(
        0.01, help="lambda, the weight of the embedding regularizer (the paper's 0.01)", above=0
    )

    def check(self) -> None:
        if self.layer is not None and not self.layer.strip():
            raise ValueError("layer must be a module path such as 'layer2.0.conv2', or left out")


@register_defense("uchida")
class UchidaWatermark(WhiteBoxDefense):
    """Weight-regularizer watermark in one convolution (Uchida et al., ICMR 2017).

    KeyGen picks a convolution layer and draws a secret matrix X (T x M, standard normal)
    and T random bits b, where M = kernel height x kernel width x input channels. Mark
    trains a fresh model on the owner's data with the embedding regularizer
    ``lambda * sum_j BCE(sigmoid(X w)_j, b_j)`` added to the task loss, ``w`` being the
    layer's weights averaged over its output filters. Evidence: the bits ``X w > 0`` read
    from the weights of the model under test that equal b, against chance 0.5.

    Defaults are the paper's: T = 256 bits, lambda = 0.01, X drawn from N(0, 1) (its
    "random" embedding parameter, the one it recommends), the regularizer summed over
    the T bits; they embed fully within the smoke protocol's 8 epochs, so none is changed.
    KeyGen refuses T > M: only with T <= M can a (full-rank) X reach every bit string, as
    in the paper's 256 bits in M = 3 x 3 x 64 = 576 weights. The paper marks the second
    convolution of the conv2 group of its wide ResNet; for any timm model the default
    layer is the middle ungrouped convolution with a spatial kernel and at least T
    weights per filter, in ``named_modules()`` order (``layer2.1.conv2`` of resnet18,
    ``layer2.0.conv2`` of the smoke protocol's model), recorded in the key.
    """

    family = "weight regularizer (projected filter mean, secret bits)"
    paper = "Uchida et al., ICMR 2017"
    Params = UchidaParams

    def keygen(self, ctx: Context) -> WhiteBoxKey:
        rng = ctx.rng("keygen")
        layer, projection = filter_projection(ctx, self.params.layer, self.params.bits, rng)
        bits = rng.integers(0, 2, self.params.bits)
        return WhiteBoxKey.create(self.name, layer, projection, bits)

    def regularizer(self, key: WhiteBoxKey, ctx: Context) -> ExtraLoss:
        return projected_filter_loss(key, self.params.strength, ctx)

    def extract_bits(self, model: nn.Module, key: WhiteBoxKey, ctx: Context) -> np.ndarray | None:
        return projected_filter_bits(model, key)
