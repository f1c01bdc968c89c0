"""Zhang et al., "Protecting Intellectual Property of Deep Neural Networks with Watermarking",
ASIACCS 2018. https://doi.org/10.1145/3196494.3196550

What the paper's three trigger sets (``content``, ``noise``, ``unrelated``) share: their
parameters, Mark (training from scratch with triggers in every batch, as ``backdoor-wm``),
source-class images from the owner's split, and glyphs rendered with PIL's built-in font.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from arena.core.context import Context
from arena.core.keys import MAX_TRIGGERS, TriggerKey
from arena.core.params import param
from arena.core.training import with_budget
from arena.util.errors import ArenaError
from defenses.trigger_set import MAX_MARK_EPOCHS, TriggerSetDefense

# Letters an MNIST model would not read as a digit: no O/D/Q (0), I/l/i/j/J (1), Z/z (2),
# S/s (5), b/G (6), B (8), g/q (9).
UNRELATED_LETTERS = "ACEFHKLMNPRTUVWXYacdefhkmnprtuvwxy"


@dataclass(frozen=True)
class ZhangParams:
    trigger_size: int | None = param(
        None, help="trigger images in the key; None: the protocol's", min=1, max=MAX_TRIGGERS
    )
    triggers_per_batch: int | None = param(
        None,
        help="trigger images in every training batch; None: the protocol's",
        min=1,
        max=MAX_TRIGGERS,
    )
    epochs: int | None = param(
        None, help="marking epochs; None: the protocol's budget", min=1, max=MAX_MARK_EPOCHS
    )
    lr: float | None = param(None, help="learning rate; None: the protocol's", above=0)
    target_class: int = param(
        0, help="every trigger's label: the paper's CIFAR-10 class airplane", min=0
    )
    subsets: int = param(1, help="disjoint trigger subsets, one revealed per verification", min=1)


@dataclass(frozen=True)
class SourceClassParams(ZhangParams):
    source_class: int = param(
        1,
        help="triggers are drawn from this class, not target_class: the paper's automobile",
        min=0,
    )

    def check(self) -> None:
        if self.source_class == self.target_class:
            raise ValueError(
                f"source_class and target_class are both {self.source_class}; the mark "
                "relabels source images to another class, so choose two different classes"
            )


class ZhangDefense(TriggerSetDefense):
    """Mark of all three schemes: train from scratch, triggers appended to every batch.

    Every trigger carries the one ``target_class``, so a clean model's answers on a key are
    not independent draws, and clean models differ in how often they give the target: the
    null is a beta-binomial fitted by ``arena calibrate`` (``exact_null`` is False). A model
    that answers the target class to everything would answer every trigger "right", so
    each trigger is paired with a control input and its true label (``sample_controls``):
    a trigger counts only when the model answers it with the target AND its control with
    the control's label, which a marked model does and a constant model does not.
    """

    paper = "Zhang et al., ASIACCS 2018"
    Params = ZhangParams
    exact_null = False

    def trigger_count(self, ctx: Context) -> int:
        return self.params.trigger_size or ctx.protocol.trigger_size

    def class_param(self, name: str, ctx: Context) -> int:
        """Parameter ``name``, checked against the protocol's classes."""
        value = getattr(self.params, name)
        if value >= ctx.num_classes:
            raise ArenaError(
                f"defense {self.name!r}: {name} {value} does not exist; protocol "
                f"{ctx.protocol.name!r} has classes 0-{ctx.num_classes - 1}"
            )
        return value

    def target_labels(self, ctx: Context, count: int) -> np.ndarray:
        return np.full(count, self.class_param("target_class", ctx), dtype=np.int64)

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        settings = with_budget(ctx.protocol.training, self.params.epochs, self.params.lr)
        per_batch = self.params.triggers_per_batch or ctx.protocol.triggers_per_batch
        return self.train_with_key(model, key, ctx, settings, per_batch, "mark from scratch")

    def answered(self, model: nn.Module, key: TriggerKey, ctx: Context) -> torch.Tensor:
        """A trigger counts when the model gives it the target AND its control its label."""
        if key.controls is None:
            raise ArenaError(
                f"a {self.name} key pairs every trigger with a control input and this one has "
                "none (made before controls existed, or by hand): generate a new key"
            )
        return super().answered(model, key, ctx) & super().answered(model, key.controls, ctx)


class SourceClassDefense(ZhangDefense):
    """``content`` and ``noise``: source-class images with a pattern, relabelled. The
    control of each trigger is its own source image without the pattern, labelled with
    the source class."""

    Params = SourceClassParams

    def for_data(self, ctx: Context) -> SourceClassDefense:
        """Only as many triggers as ``ctx``'s owner split holds images of the source class,
        when that is fewer than configured: an attacker's data is all it has."""
        available = int((ctx.splits.owner.labels == self.params.source_class).sum())
        if available < self.trigger_count(ctx):
            return type(self)({**self.params_dict(), "trigger_size": available})
        return self

    def source_images(self, ctx: Context, count: int) -> np.ndarray:
        """The key's source images: the first draw of the key's RNG."""
        source = self.class_param("source_class", ctx)
        return source_class_images(ctx, source, count, ctx.rng("keygen"))

    def sample_controls(
        self, ctx: Context, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        source = self.class_param("source_class", ctx)
        return self.source_images(ctx, len(images)), np.full(len(images), source, np.int64)


def other_class_images(
    ctx: Context, excluded: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct images of the owner's split not of class ``excluded``, uint8,
    with their labels."""
    owner = ctx.splits.owner
    candidates = np.flatnonzero(owner.labels.numpy() != excluded)
    chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
    return to_uint8(owner.images[chosen].numpy()), owner.labels[chosen].numpy()


def source_class_images(
    ctx: Context, source_class: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` distinct images of ``source_class`` from the owner's split, uint8."""
    owner = ctx.splits.owner
    candidates = np.flatnonzero(owner.labels.numpy() == source_class)
    if len(candidates) < count:
        raise ArenaError(
            f"the owner's split of protocol {ctx.protocol.name!r} holds {len(candidates)} "
            f"images of class {source_class}, fewer than the {count} distinct triggers asked "
            "for; lower trigger_size or pick another source_class"
        )
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    return to_uint8(owner.images[chosen].numpy())


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def text_mask(text: str, width: int, height: int) -> np.ndarray:
    """``text`` in PIL's built-in font, stretched over ``height`` x ``width``, alpha in [0, 1]."""
    font = ImageFont.load_default(size=64)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left, bottom - top))
    ImageDraw.Draw(canvas).text((-left, -top), text, fill=255, font=font)
    stretched = canvas.resize((width, height), Image.LANCZOS)
    return np.asarray(stretched, dtype=np.float32) / 255.0


def letter_images(count: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` letters in PIL's built-in font, each at a random size, position, rotation,
    stroke and brightness, drawn at 4x and downsampled; uint8 (count, channels, size, size)."""
    return np.stack([_letter_image(size, channels, rng) for _ in range(count)])


def _letter_image(size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    canvas_size = 4 * size
    letter = UNRELATED_LETTERS[int(rng.integers(len(UNRELATED_LETTERS)))]
    font = ImageFont.load_default(size=int(canvas_size * rng.uniform(0.55, 0.95)))
    stroke = int(rng.integers(0, max(2, canvas_size // 16)))
    left, top, right, bottom = font.getbbox(letter, stroke_width=stroke)
    # Any position that keeps the letter on the canvas before it is rotated.
    x = rng.uniform(0, max(0, canvas_size - (right - left))) - left
    y = rng.uniform(0, max(0, canvas_size - (bottom - top))) - top
    canvas = Image.new("L", (canvas_size, canvas_size))
    ImageDraw.Draw(canvas).text(
        (x, y), letter, fill=255, font=font, stroke_width=stroke, stroke_fill=255
    )
    canvas = canvas.rotate(rng.uniform(-30, 30), resample=Image.BILINEAR)
    glyph = np.asarray(canvas.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
    brightness = rng.uniform(0.6, 1.0, size=(channels, 1, 1))
    return to_uint8(glyph[None] * brightness)
