"""Zhang et al., "Protecting Intellectual Property of Deep Neural Networks with Watermarking",
ASIACCS 2018, WM_unrelated: out-of-distribution images (rendered letters), one label.
"""

from __future__ import annotations

import numpy as np

from arena.core.context import Context
from arena.core.registry import register_defense
from defenses.zhang import ZhangDefense, ZhangParams, letter_images, other_class_images


@register_defense("unrelated")
class UnrelatedWatermark(ZhangDefense):
    """Unrelated images as the watermark (Zhang et al., ASIACCS 2018, WM_unrelated).

    The paper takes images of a task the model never learns (MNIST digits for a CIFAR-10
    model) and assigns them all to one class. Here KeyGen renders ``trigger_size``
    letters in PIL's built-in font, offline, each at a random size, position, rotation,
    stroke width and brightness drawn from the key's RNG; letters an MNIST model would
    read as digits (O, I, S, Z, B, ...) are left out. Every trigger is labelled
    ``target_class``. Mark trains from scratch with triggers in every batch, like
    ``backdoor-wm``. Each trigger's control is an image of the owner's split of another
    class than the target, with its label. Defaults: ``target_class=0`` follows the
    paper's example (unrelated images labelled airplane, class 0 of CIFAR-10); trigger
    count, triggers per batch, epochs and learning rate are the protocol's.
    """

    family = "trigger set (unrelated: rendered letters, one label)"
    Params = ZhangParams

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        count = self.trigger_count(ctx)
        labels = self.target_labels(ctx, count)
        protocol = ctx.protocol
        images = letter_images(count, protocol.image_size, protocol.channels, ctx.rng("keygen"))
        return images, labels

    def sample_controls(
        self, ctx: Context, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        target = self.class_param("target_class", ctx)
        return other_class_images(ctx, target, len(images), ctx.rng("keygen-controls"))
