"""Zhang et al., "Protecting Intellectual Property of Deep Neural Networks with Watermarking",
ASIACCS 2018, WM_noise: source-class images with Gaussian noise, relabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arena.core.context import Context
from arena.core.params import param
from arena.core.registry import register_defense
from defenses.zhang import SourceClassDefense, SourceClassParams, to_uint8


@dataclass(frozen=True)
class NoiseParams(SourceClassParams):
    noise_std: float = param(
        0.3, help="standard deviation of the added noise, pixels in [0, 1]", above=0, max=1
    )


@register_defense("noise")
class NoiseWatermark(SourceClassDefense):
    """Pre-specified noise as the watermark (Zhang et al., ASIACCS 2018, WM_noise).

    KeyGen draws ``trigger_size`` distinct images of ``source_class`` from the owner's
    training split and adds zero-mean Gaussian noise of ``noise_std`` to every pixel
    (fresh noise per image, clipped to [0, 1]); every trigger is labelled ``target_class``.
    Mark trains from scratch with triggers in every batch, like ``backdoor-wm``. Each
    trigger's control is its source image without the noise. Defaults: ``source_class=1``,
    ``target_class=0`` follow the paper's CIFAR-10 example
    (noisy automobile images labelled airplane). The paper does not state a number for
    the noise; ``noise_std=0.3`` is that of the re-implementation in the Watermark-
    Robustness-Toolbox (Lukas et al., IEEE S&P 2022). Trigger count, triggers per batch,
    epochs and learning rate are the protocol's.
    """

    family = "trigger set (noise: noisy source-class images)"
    Params = NoiseParams

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        count = self.trigger_count(ctx)
        labels = self.target_labels(ctx, count)
        images = self.source_images(ctx, count) / 255.0
        noise = ctx.rng("keygen-noise").normal(0.0, self.params.noise_std, images.shape)
        noisy = images + noise
        return to_uint8(noisy), labels
