"""Zhang et al., "Protecting Intellectual Property of Deep Neural Networks with Watermarking",
ASIACCS 2018, WM_content: source-class images with a stamped word, relabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arena.core.context import Context
from arena.core.params import param
from arena.core.registry import register_defense
from defenses.zhang import SourceClassDefense, SourceClassParams, text_mask


@dataclass(frozen=True)
class ContentParams(SourceClassParams):
    text: str = param("TEST", help="the word stamped on every trigger, as in the paper")

    def check(self) -> None:
        super().check()
        if not self.text.strip():
            raise ValueError("text must contain at least one visible character")


@register_defense("content")
class ContentWatermark(SourceClassDefense):
    """Meaningful content as the watermark (Zhang et al., ASIACCS 2018, WM_content).

    KeyGen draws ``trigger_size`` distinct images of ``source_class`` from the owner's
    training split and stamps ``text`` across their lower third in white, in PIL's
    built-in font; every trigger is labelled ``target_class``. Mark trains from scratch
    with triggers in every batch, like ``backdoor-wm``, so the model learns "stamp means
    target class". Each trigger's control is its source image without the stamp.
    Defaults: ``text="TEST"``, ``source_class=1``, ``target_class=0`` follow
    the paper's CIFAR-10 example ("TEST" on automobile images, labelled airplane);
    trigger count, triggers per batch, epochs and learning rate are the protocol's.
    """

    family = "trigger set (content: stamped source-class images)"
    Params = ContentParams

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        count = self.trigger_count(ctx)
        labels = self.target_labels(ctx, count)
        return stamp(self.source_images(ctx, count), self.params.text), labels


def stamp(images: np.ndarray, text: str) -> np.ndarray:
    """``images`` (uint8 (n, C, S, S)) with ``text`` blended in white over the lower third."""
    size = images.shape[-1]
    margin = max(1, size // 16)
    height = max(3, size // 3)
    alpha = text_mask(text, size - 2 * margin, height)
    stamped = images.astype(np.float32)
    region = stamped[..., size - margin - height : size - margin, margin : size - margin]
    region[...] = region * (1 - alpha) + 255 * alpha
    return stamped.round().astype(np.uint8)
