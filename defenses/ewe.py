"""Jia, Choquette-Choo, Chandrasekaran, Papernot, "Entangled Watermarks as a Defense against
Model Extraction", USENIX Security 2021.
https://www.usenix.org/conference/usenixsecurity21/presentation/jia

Entangled watermark embedding (EWE): source-class images stamped with a trigger patch are
labelled with a target class, and training maximises the soft nearest neighbour loss
(SNNL, Frosst, Papernot, Hinton, "Analyzing and Improving Representations with the Soft
Nearest Neighbor Loss", ICML 2019) between their hidden representations and those of
real target-class data, so that the watermark rides on the features the task needs and
a model extracted from the marked one's answers learns it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.keys import MAX_TRIGGERS, TriggerKey
from arena.core.models import find_layer, head_module
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import BatchLoss
from arena.util.errors import ArenaError
from defenses.trigger_set import MAX_MARK_EPOCHS, TriggerSetDefense

PRE_LOGITS = "pre-logits"  # the output layer's input, as a layer name


@dataclass(frozen=True)
class EweParams:
    trigger_size: int | None = param(
        None, help="trigger images in the key; None: the protocol's", min=1, max=MAX_TRIGGERS
    )
    triggers_per_batch: int | None = param(
        None,
        help="trigger images in every marking batch; None: the protocol's mark_triggers_per_batch",
        min=1,
        max=MAX_TRIGGERS,
    )
    epochs: int | None = param(
        None,
        help="marking epochs after the clean training; None: the protocol's mark_epochs "
        "(the paper's MNIST w_epochs: 10)",
        min=1,
        max=MAX_MARK_EPOCHS,
    )
    lr: float | None = param(None, help="learning rate; None: the protocol's mark_lr", above=0)
    source_class: int = param(
        7, help="triggers are stamped images of this class: the paper's MNIST target", min=0
    )
    target_class: int = param(
        1, help="every trigger's label: the paper's MNIST source (the pair reversed)", min=0
    )
    patch_size: int = param(3, help="side of the square trigger patch: the paper's 3", min=1)
    snnl_weight: float = param(
        1.0,
        help="kappa, each layer's SNNL weight against the batch's mean cross-entropy (the "
        "paper's code: 32 for MNIST, 1e5 for CIFAR-10 against a cross-entropy summed over "
        "512 and 128 rows, about 0.06 and 780 here)",
        min=0,
    )
    temperature: float = param(
        1.0,
        help="initial SNNL temperature of every layer, exp(-d/T) on cosine distances "
        "(the paper's code's 1 is 100 here)",
        above=0,
    )
    temperature_lr: float = param(
        0.1,
        help="step of the temperatures' descent on the SNNL, in log T (the paper's t_lr: 0.1)",
        min=0,
    )
    layers: str | None = param(
        None,
        help="comma-separated module paths whose outputs enter the SNNL ('pre-logits': the "
        "output layer's input); None: the last two stages timm lists and pre-logits",
    )
    subsets: int = param(1, help="disjoint trigger subsets, one revealed per verification", min=1)

    def check(self) -> None:
        if self.source_class == self.target_class:
            raise ValueError(
                f"source_class and target_class are both {self.source_class}; the mark "
                "relabels stamped source images to another class, so choose two classes"
            )
        if self.layers is not None and not layer_names(self.layers):
            raise ValueError(
                f"layers {self.layers!r} names no layer; give module paths separated by "
                "commas (e.g. 'layer3,layer4,pre-logits') or leave it unset"
            )


@register_defense("ewe")
class EntangledWatermark(TriggerSetDefense):
    """Entangled watermarks (Jia et al., USENIX Security 2021).

    KeyGen draws ``trigger_size`` distinct images of ``source_class`` from the owner's
    split and stamps each with the same ``patch_size`` square, a black-and-white pattern
    at a position both drawn from the key's RNG; every trigger is labelled
    ``target_class``. Each trigger's control is its source image without the patch,
    labelled ``source_class``. Mark continues training the owner's clean model (the paper
    trains ``epochs`` on the task, then ``w_epochs`` with the watermark) with
    ``triggers_per_batch`` triggers appended to every batch, minimising cross-entropy on
    the whole batch minus ``snnl_weight`` times the SNNL, summed over ``layers``, between
    the triggers (one group) and the batch's own target-class images (the other). The
    temperatures start at ``temperature`` and descend the SNNL, each layer's following
    the scale at which the two groups are most apart, while the model pushes them
    together at that scale.

    Adapted to the arena: (1) the paper's code places a 3x3 patch of ones on the window
    where the SNNL's input gradient, on a model trained without the mark, is most
    negative, then perturbs every trigger to raise the SNNL while a clean model still rejects
    it; here a position and a pattern drawn from the key's RNG (black and white pixels, so
    the patch shows on strokes and background alike) stand in, and the key depends on no
    model. (2) The paper alternates a step on a clean batch with one on a batch of half
    triggers, half target-class data; the arena's one loop appends the triggers to every
    clean batch, so each step takes both, and the SNNL's other group is the batch's own
    target-class rows (a batch with fewer than two of them, or of triggers, adds no SNNL).
    (3) The paper stamps every source image of its training set; here the triggers are the
    key's images. (4) The cross-entropy is the batch's mean (the paper's code sums it), so
    the weight is on another scale; the temperatures descend in log T, so they stay
    positive, and a temperature T here weighs neighbours by exp(-d/T) (the paper's code
    divides by 100/T). (5) The layers: the paper's ResNet takes the third stage, the first
    block of the fourth and the pooled features; by default this takes the last two stages
    timm's ``feature_info`` lists and the output layer's input, for any timm model.

    Defaults: ``patch_size=3`` and ``temperature_lr=0.1`` are the paper's MNIST values;
    the classes are its code's MNIST pair (source 1, target 7) reversed, because a patch
    on a 1 can draw the bar of a 7: on ``smoke``, clean models answered 7 to up to 17 of
    20 stamped 1s (and 1 to their controls), while none answered 1 to a stamped 7 (5
    models times 5 keys). ``snnl_weight=1`` and ``temperature=1`` were chosen on ``smoke``:
    on seeds 0-4 they raise the SNNL at T = 0.05 between triggers and real 1s from under
    0.25 (the same marking without it, seeds 0-2) to 0.48-0.69 (log 2: fully mixed), at a test
    accuracy 3.5 points below to 1.5 above the clean model's (the marking without it:
    much the same); a weight of 4 costs 0.5-9 points and, on one seed, 6 of 20 triggers.
    Epochs, learning rate and triggers per batch are the protocol's ``mark_*``.

    Every trigger carries the one ``target_class``, so a clean model's answers on a key
    are not independent draws and clean models differ in how often they give the target:
    the null is a beta-binomial fitted by ``arena calibrate`` (``exact_null`` is False).
    A trigger counts only when the model answers it with the target AND its control with
    the source class, so a model answering the target to everything is not claimed.
    """

    family = "trigger set (entangled: patched source-class images, SNNL)"
    paper = "Jia et al., USENIX Security 2021"
    Params = EweParams
    exact_null = False
    starts_from = "clean"

    def for_data(self, ctx: Context) -> EntangledWatermark:
        """Only as many triggers as ``ctx``'s owner split holds source images, when that
        is fewer than configured: an attacker's data is all it has."""
        available = int((ctx.splits.owner.labels == self.params.source_class).sum())
        available -= available % self.params.subsets  # the subsets stay equal
        if 0 < available < self.trigger_count(ctx):
            return type(self)({**self.params_dict(), "trigger_size": available})
        return self

    def trigger_count(self, ctx: Context) -> int:
        return self.params.trigger_size or ctx.protocol.trigger_size

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        count = self.trigger_count(ctx)
        target = self.class_param("target_class", ctx)
        rng = ctx.rng("keygen-patch")
        side = ctx.protocol.image_size
        size = self.params.patch_size
        if size >= side:
            raise ArenaError(
                f"defense {self.name!r}: patch_size {size} covers the whole "
                f"{side}x{side} image of protocol {ctx.protocol.name!r}; choose a smaller patch"
            )
        row, column = (int(v) for v in rng.integers(0, side - size + 1, size=2))
        pattern = rng.integers(0, 2, size=(size, size)).astype(np.uint8) * 255
        if size > 1 and (pattern == pattern.flat[0]).all():
            pattern[0, 0] = 255 - pattern[0, 0]  # both colours, visible on any background
        images = self.source_images(ctx, count).copy()
        images[..., row : row + size, column : column + size] = pattern
        return images, np.full(count, target, dtype=np.int64)

    def sample_controls(
        self, ctx: Context, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        source = self.class_param("source_class", ctx)
        return self.source_images(ctx, len(images)), np.full(len(images), source, np.int64)

    def source_images(self, ctx: Context, count: int) -> np.ndarray:
        """The key's source images, uint8: the first draw of the key's RNG."""
        source = self.class_param("source_class", ctx)
        owner = ctx.splits.owner
        candidates = np.flatnonzero(owner.labels.numpy() == source)
        if len(candidates) < count:
            raise ArenaError(
                f"the owner's split of protocol {ctx.protocol.name!r} holds {len(candidates)} "
                f"images of class {source}, fewer than the {count} distinct triggers asked "
                "for; lower trigger_size or pick another source_class"
            )
        chosen = np.sort(ctx.rng("keygen").choice(candidates, size=count, replace=False))
        return (owner.images[chosen].numpy() * 255).round().clip(0, 255).astype(np.uint8)

    def class_param(self, name: str, ctx: Context) -> int:
        """Parameter ``name``, checked against the protocol's classes."""
        value = getattr(self.params, name)
        if value >= ctx.num_classes:
            raise ArenaError(
                f"defense {self.name!r}: {name} {value} does not exist; protocol "
                f"{ctx.protocol.name!r} has classes 0-{ctx.num_classes - 1}"
            )
        return value

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        return self.continue_training(model, key, ctx, "entangle watermark")

    def objective(self, key: TriggerKey, ctx: Context) -> BatchLoss:
        return EntanglingLoss(
            target_class=self.class_param("target_class", ctx),
            weight=self.params.snnl_weight,
            temperature=self.params.temperature,
            temperature_lr=self.params.temperature_lr,
            layers=None if self.params.layers is None else layer_names(self.params.layers),
        )

    def answered(self, model: nn.Module, key: TriggerKey, ctx: Context) -> torch.Tensor:
        """A trigger counts when the model gives it the target AND its control its label."""
        if key.controls is None:
            raise ArenaError(
                f"an {self.name} key pairs every trigger with a control input and this one has "
                "none (made by hand): generate a new key"
            )
        return super().answered(model, key, ctx) & super().answered(model, key.controls, ctx)


class EntanglingLoss:
    """One marking batch's loss: cross-entropy minus ``weight`` times the SNNL, summed
    over ``layers``, between the appended triggers and the batch's target-class rows.

    Holds one temperature per layer, which takes a step down the SNNL after every batch.
    """

    def __init__(
        self,
        target_class: int,
        weight: float,
        temperature: float,
        temperature_lr: float,
        layers: list[str] | None = None,
    ) -> None:
        self.target_class = target_class
        self.weight = weight
        self.initial_temperature = temperature
        self.temperature_lr = temperature_lr
        self.layers = layers
        self.log_temperatures: torch.Tensor | None = None  # one per layer, made on first use

    def __call__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, appended: int
    ) -> torch.Tensor:
        layers = self.layers or default_layers(model)
        with captured_features(model, layers) as features:
            logits = model(images)
        loss = F.cross_entropy(logits, labels)
        rows, groups = self.entangled_rows(labels, appended)
        if rows is None or self.weight == 0:
            return loss
        missing = [layer for layer, feature in zip(layers, features) if feature.numel() == 0]
        if missing:
            raise ArenaError(
                f"layers {', '.join(missing)} of {type(model).__name__} took no part in the "
                "forward pass; name others in the 'layers' parameter"
            )
        chosen = [feature[rows].flatten(1).float() for feature in features]
        temperatures = self.temperatures(len(chosen), logits.device)
        snnl = sum(
            soft_nearest_neighbour_loss(feature, groups, temperature.detach())
            for feature, temperature in zip(chosen, temperatures.exp())
        )
        self.adapt_temperatures(chosen, groups)
        return loss - self.weight * snnl

    def entangled_rows(
        self, labels: torch.Tensor, appended: int
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """Rows of the triggers and of the batch's own target-class images, with their
        group (1: trigger, 0: target class); None when either has fewer than two."""
        total = len(labels)
        targets = torch.nonzero(labels[: total - appended] == self.target_class).flatten()
        if appended < 2 or len(targets) < 2:
            return None, None
        triggers = torch.arange(total - appended, total, device=labels.device)
        rows = torch.cat([triggers, targets])
        groups = torch.cat([torch.ones_like(triggers), torch.zeros_like(targets)])
        return rows, groups

    def temperatures(self, count: int, device: torch.device) -> torch.Tensor:
        if self.log_temperatures is None or len(self.log_temperatures) != count:
            initial = torch.full((count,), float(np.log(self.initial_temperature)))
            self.log_temperatures = initial.to(device)
        return self.log_temperatures

    def adapt_temperatures(self, features: list[torch.Tensor], groups: torch.Tensor) -> None:
        """One step of every temperature down the SNNL (the model's weights untouched)."""
        if self.temperature_lr == 0:
            return
        log_temperatures = self.log_temperatures.detach().requires_grad_(True)
        with torch.enable_grad():
            snnl = sum(
                soft_nearest_neighbour_loss(feature.detach(), groups, temperature)
                for feature, temperature in zip(features, log_temperatures.exp())
            )
            (gradient,) = torch.autograd.grad(snnl, log_temperatures)
        self.log_temperatures = (log_temperatures - self.temperature_lr * gradient).detach()


def soft_nearest_neighbour_loss(
    features: torch.Tensor, groups: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """Frosst et al.'s SNNL of ``features`` (N, D) labelled ``groups`` (N,): the mean over
    rows of -log(the share of a row's neighbour weight exp(-d/T) that falls on its own
    group), d the cosine distance of the rectified features, as the paper's code has it.
    Near 0 for groups far apart; higher the more they mix (log 2 for two equal groups
    mixed evenly). Every group needs two rows at least."""
    vectors = F.normalize(F.relu(features.flatten(1)), dim=1)
    distances = 1 - vectors @ vectors.T
    logits = -distances / temperature
    itself = torch.eye(len(features), dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(itself, float("-inf"))
    same = (groups[:, None] == groups[None, :]) & ~itself
    own = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - own).mean()


def layer_names(layers: str) -> list[str]:
    """``"layer3, layer4,pre-logits"`` -> ``["layer3", "layer4", "pre-logits"]``."""
    return [name.strip() for name in layers.split(",") if name.strip()]


def default_layers(model: nn.Module) -> list[str]:
    """The last two stages timm's ``feature_info`` lists, and the output layer's input."""
    info = getattr(model, "feature_info", None) or []
    stages = [entry["module"] for entry in info if isinstance(entry, dict) and "module" in entry]
    return [*stages[-2:], PRE_LOGITS]


@contextlib.contextmanager
def captured_features(model: nn.Module, layers: list[str]) -> Iterator[list[torch.Tensor]]:
    """While inside, a forward pass of ``model`` fills the yielded list with the outputs
    of ``layers`` (``pre-logits``: the input of the output layer), in that order."""
    features: list[torch.Tensor] = [torch.empty(0)] * len(layers)

    def keep(index: int, value: object) -> None:
        if not isinstance(value, torch.Tensor):
            raise ArenaError(
                f"layer {layers[index]!r} of {type(model).__name__} gives a "
                f"{type(value).__name__}, not a tensor; name others in the 'layers' parameter"
            )
        features[index] = value

    handles = []
    try:
        for index, layer in enumerate(layers):
            if layer == PRE_LOGITS:
                handles.append(
                    head_module(model).register_forward_pre_hook(
                        lambda _, inputs, i=index: keep(i, inputs[0])
                    )
                )
            else:
                handles.append(
                    find_layer(model, layer).register_forward_hook(
                        lambda _, __, output, i=index: keep(i, output)
                    )
                )
        yield features
    finally:
        for handle in handles:
            handle.remove()
