"""The one training loop. Defenses and attacks pass in what they need.

Extra trigger batches (``triggers`` and ``triggers_per_batch``: the seed paper appends k
trigger images to every batch), extra loss terms (a white-box regularizer), training only
the output layer (FTLL/RTLL) and label smoothing are arguments, not copies of the loop.
Shuffling and trigger sampling draw from a generator seeded by the caller, so a run on
the CPU is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arena.core.environment import autocast, layout, precision
from arena.core.models import head_module
from arena.util.errors import ArenaError
from arena.util.progress import Reporter, silent


@dataclass(frozen=True)
class TrainSettings:
    """An optimizer and budget. Attacks declare their own; nothing is inherited."""

    epochs: int
    batch_size: int = 100
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = 0.0

    def check(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be > 0 and finite, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class TrainReport:
    steps: int
    seconds: float  # what the training took, also when the model was reused
    final_loss: float
    reused: bool = False  # handed back from an identical earlier training, not run again


ExtraLoss = Callable[[nn.Module], torch.Tensor]


# A scheme's own objective for one batch: (model, images, labels, key images) -> loss,
# where the last ``key images`` rows of the batch are the trigger images the loop
# appended (0 without triggers). It replaces the cross-entropy of the batch; schemes whose
# objective looks at more than the output (features, a margin, perturbed weights) pass
# one instead of writing a loop of their own.
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


# "shift": random translations by up to 1/8 of the image side (digits must not be
# mirrored); "shift-flip" adds horizontal flips (natural images such as CIFAR-10).
Augment = Literal["none", "shift", "shift-flip"]


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    device: torch.device,
    generator: torch.Generator,
    description: str = "training",
    progress: Reporter = silent,
    triggers: tuple[torch.Tensor, torch.Tensor] | None = None,
    triggers_per_batch: int = 0,
    extra_loss: ExtraLoss | None = None,
    trainable: Literal["all", "head", "selected"] = "all",
    augment: Augment = "none",
    temperature: float = 1.0,
    batch_loss: BatchLoss | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``images`` (float, [0, 1]) and ``labels``.

    ``labels`` are class indices (N,) or target probabilities (N, classes), e.g. a
    teacher's soft labels. ``temperature`` T divides the logits inside the loss, which is
    then scaled by T^2 so its gradients keep their size (Hinton et al. 2015); at 1 the
    loss is plain cross-entropy. ``trainable``: "all" trains every parameter (and sets
    ``requires_grad`` on all of them); "head" only the output layer, the body frozen in
    eval mode; "selected" the parameters whose ``requires_grad`` the caller left True
    (e.g. only the BatchNorm layers), the model in train mode. ``batch_loss`` replaces
    the batch's cross-entropy (see ``BatchLoss``); ``extra_loss`` is still added to it.
    """
    _check_arguments(settings, labels, temperature, triggers, triggers_per_batch)
    if batch_loss is not None and temperature != 1.0:
        raise ValueError("a batch_loss defines its own objective; it takes no temperature")
    model.to(device)
    optimizer = make_optimizer(_trainable_parameters(model, trainable), settings)
    total_steps = settings.epochs * max(1, -(-len(images) // settings.batch_size))
    scheduler = _make_scheduler(optimizer, settings, total_steps)
    feed = (
        _TriggerFeed(triggers, triggers_per_batch, device, generator)
        if triggers is not None and triggers_per_batch > 0
        else None
    )
    images, labels = images.to(device), labels.to(device)
    start = time.perf_counter()
    loss_value = float("nan")
    steps = 0
    with (
        progress.task(description, total=total_steps) as advance,
        layout(model, device) as channels_last,
    ):
        for epoch in range(settings.epochs):
            _set_mode(model, trainable)
            for batch_images, batch_labels in _epoch_batches(
                images, labels, settings.batch_size, generator, augment, device
            ):
                if feed is not None:
                    batch_images, batch_labels = feed.append(batch_images, batch_labels)
                if channels_last:
                    batch_images = batch_images.contiguous(memory_format=torch.channels_last)
                with autocast(device):
                    appended = feed.per_batch if feed is not None else 0
                    loss = _batch_objective(
                        model, batch_images, batch_labels, settings, temperature, extra_loss,
                        batch_loss, appended,
                    )  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                steps += 1
                advance(1)
            loss_value = float(loss.detach())
            _check_finite(loss_value, device, description, epoch)
    model.eval()
    return TrainReport(steps=steps, seconds=time.perf_counter() - start, final_loss=loss_value)


def _batch_objective(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    temperature: float,
    extra_loss: ExtraLoss | None,
    batch_loss: BatchLoss | None,
    appended: int,
) -> torch.Tensor:
    """The batch's loss: cross-entropy (``_loss``), or the scheme's ``batch_loss`` plus
    ``extra_loss``."""
    if batch_loss is None:
        return _loss(model, images, labels, settings, temperature, extra_loss)
    loss = batch_loss(model, images, labels, appended)
    return loss if extra_loss is None else loss + extra_loss(model)


def _check_finite(loss: float, device: torch.device, description: str, epoch: int) -> None:
    """Stop a bfloat16 run whose loss is no longer finite, with what to do about it.
    (fp32 training may diverge on purpose: the "diverged" reference recipe.)"""
    if not math.isfinite(loss) and precision(device) == "bf16":
        raise ArenaError(
            f"{description}: the bfloat16 loss is not finite after epoch {epoch + 1}; on "
            "a CPU with AMX start Python with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 "
            "(the arena command does), or use ARENA_PRECISION=fp32"
        )


def _check_arguments(
    settings: TrainSettings,
    labels: torch.Tensor,
    temperature: float,
    triggers: tuple[torch.Tensor, torch.Tensor] | None,
    triggers_per_batch: int,
) -> None:
    settings.check()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.ndim == 2 and triggers is not None and triggers_per_batch > 0:
        raise ValueError("trigger batches carry class indices; they cannot join soft targets")


def _make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if settings.schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


def _epoch_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (and augmented) batches, drawn from ``generator`` as they go."""
    order = _to_device(torch.randperm(len(images), generator=generator), device)
    for batch_start in range(0, len(images), batch_size):
        index = order[batch_start : batch_start + batch_size]
        batch_images, batch_labels = images[index], labels[index]
        if augment != "none":
            batch_images = _augment(batch_images, generator, flip=augment == "shift-flip")
        yield batch_images, batch_labels


def _loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    temperature: float,
    extra_loss: ExtraLoss | None,
) -> torch.Tensor:
    logits = model(images)
    if temperature != 1.0:
        logits = logits / temperature
    loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
    if temperature != 1.0:
        loss = loss * temperature**2
    if extra_loss is not None:
        loss = loss + extra_loss(model)
    return loss


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 500
) -> torch.Tensor:
    model.eval()
    model.to(device)
    if device.type == "cuda" and images.device.type == "cpu":
        images = images.pin_memory()  # so the copies below overlap the computation
    outputs = []
    # No graph: the same numbers, less memory (not inference_mode: distillation trains on
    # these logits, and inference tensors cannot be saved).
    with torch.no_grad(), layout(model, device) as channels_last, autocast(device):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(model(batch).float())
    # One copy back to the host at the end, not one wait per batch.
    return torch.cat(outputs).cpu() if outputs else torch.empty(0)


def predict(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Top-1 labels."""
    return predict_logits(model, images, device).argmax(dim=1)


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> float:
    if len(images) == 0:
        return 0.0
    correct = int((predict(model, images, device) == labels.cpu()).sum())
    return correct / len(images)


class _TriggerFeed:
    """Appends ``per_batch`` trigger images to every batch, in shuffled rounds."""

    def __init__(
        self,
        triggers: tuple[torch.Tensor, torch.Tensor],
        per_batch: int,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        self.images, self.labels = triggers[0].to(device), triggers[1].to(device)
        self.per_batch = per_batch
        self.device = device
        # A stream of its own, so appending triggers leaves the data order unchanged.
        self.order = _Cycler(len(self.images), _offspring(generator))

    def append(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pick = _to_device(self.order.take(self.per_batch), self.device)
        return torch.cat([images, self.images[pick]]), torch.cat([labels, self.labels[pick]])


class _Cycler:
    """Hands out trigger indices in shuffled rounds, so every trigger is seen evenly."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator
        self.pending = torch.empty(0, dtype=torch.long)

    def take(self, count: int) -> torch.Tensor:
        while len(self.pending) < count:
            fresh = torch.randperm(self.size, generator=self.generator)
            self.pending = torch.cat([self.pending, fresh])
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken


def _offspring(generator: torch.Generator) -> torch.Generator:
    child = torch.Generator()
    child.manual_seed(generator.initial_seed() ^ 0x5DEECE66D)
    return child


def _trainable_parameters(model: nn.Module, trainable: str) -> list[nn.Parameter]:
    if trainable == "all":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return list(model.parameters())
    if trainable == "selected":  # the caller chose them with requires_grad
        chosen = [parameter for parameter in model.parameters() if parameter.requires_grad]
        if not chosen:
            raise ValueError("trainable='selected' but no parameter of the model requires grad")
        return chosen
    if trainable == "head":
        head = head_module(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        return list(head.parameters())
    raise ValueError(f"trainable must be 'all', 'head' or 'selected', got {trainable!r}")


def _set_mode(model: nn.Module, trainable: str) -> None:
    # Training only the head keeps the body, BatchNorm statistics included, frozen.
    model.train(trainable != "head")
    if trainable == "head":
        head_module(model).train()


def make_optimizer(
    parameters: list[nn.Parameter], settings: TrainSettings
) -> torch.optim.Optimizer:
    """The optimizer ``settings`` name, over ``parameters`` (also for ART estimators)."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.momentum > 0,
        )
    if settings.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; use 'sgd' or 'adam'")


def _augment(images: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random translations (reflect-padded crops) and, with ``flip``, horizontal flips.

    Trigger images are appended after this, so the key is always shown as committed.
    """
    n, _, height, width = images.shape
    pad = max(1, height // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx = _to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), images.device)
    dy = _to_device(torch.randint(0, 2 * pad + 1, (n,), generator=generator), images.device)
    # Every crop in one gather: a copy, so the values of slicing image by image, and in
    # the ordinary layout (strides decide which convolution kernels run, hence the bits).
    device = images.device
    samples = torch.arange(n, device=device)[:, None, None, None]
    planes = torch.arange(images.shape[1], device=device)[None, :, None, None]
    rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
    columns = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
    out = padded[samples, planes, rows, columns]
    if flip:
        flips = _to_device(torch.rand(n, generator=generator) < 0.5, out.device)
        # torch.where, not out[flips]: a boolean index makes a GPU wait for the host.
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out


def with_budget(settings: TrainSettings, epochs: int | None, lr: float | None) -> TrainSettings:
    """``settings`` with the epochs and learning rate a parameter overrides."""
    changes = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if lr is not None:
        changes["lr"] = lr
    return dataclasses.replace(settings, **changes)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn on the host (the seeded generators live there) on ``device``; to a
    GPU through pinned memory, so the copy does not make the host wait for the GPU."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
