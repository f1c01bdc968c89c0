"""Uchida et al., "Embedding Watermarks into Deep Neural Networks", ICMR 2017.
https://doi.org/10.1145/3078971.3078974 (arXiv:1701.04082)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.models import default_conv_layer, find_layer
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import ExtraLoss
from arena.util.errors import ArenaError
from defenses.white_box import WhiteBoxDefense, WhiteBoxKey, layer_or_none


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
        model = ctx.new_model("keygen")  # read for its structure only
        bits = self.params.bits
        layer = self.params.layer or default_conv_layer(model, min_inputs=bits)
        inputs = _filter_mean(_conv_weight(find_layer(model, layer), layer)).numel()
        if bits > inputs:
            raise ArenaError(
                f"layer {layer!r} has {inputs} weights per filter, fewer than the {bits} bits "
                "to embed; choose a larger layer or fewer bits"
            )
        rng = ctx.rng("keygen")
        projection = rng.standard_normal((bits, inputs))
        return WhiteBoxKey.create(self.name, layer, projection, rng.integers(0, 2, bits))

    def regularizer(self, key: WhiteBoxKey, ctx: Context) -> ExtraLoss:
        projection = torch.as_tensor(key.projection, device=ctx.device)
        targets = torch.as_tensor(key.bits, dtype=torch.float32, device=ctx.device)
        strength = self.params.strength

        def embedding_loss(model: nn.Module) -> torch.Tensor:
            weights = _filter_mean(_conv_weight(find_layer(model, key.layer), key.layer))
            logits = projection @ weights
            return strength * F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")

        return embedding_loss

    def extract_bits(self, model: nn.Module, key: WhiteBoxKey, ctx: Context) -> np.ndarray | None:
        layer = layer_or_none(model, key.layer)
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
            return None
        weights = _filter_mean(weight.detach().float().cpu())
        if weights.numel() != key.projection.shape[1]:
            return None
        return (torch.as_tensor(key.projection) @ weights > 0).numpy().astype(np.uint8)


def _conv_weight(module: nn.Module, path: str) -> torch.Tensor:
    """The 4-D weight (out, in, k_h, k_w) of the convolution at ``path``."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, nn.Conv2d) or weight is None:
        raise ArenaError(f"layer {path!r} is a {type(module).__name__}, not a Conv2d")
    return weight


def _filter_mean(weight: torch.Tensor) -> torch.Tensor:
    """The paper's w: the weights averaged over the output filters, flattened (M,)."""
    return weight.mean(dim=0).flatten()
