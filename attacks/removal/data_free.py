"""Data-free removal: Lu et al., "Neural Dehydration: Effective Erasure of Black-box
Watermarks from DNNs with Limited Data", ACM CCS 2024, and Chen et al.,
"REFIT: A Unified Watermark Removal Framework for Deep Learning Systems with Limited
Data", AsiaCCS 2021. The synthesis is DeepInversion's: Yin et al.,
"Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR 2020.

The attacker has no data at all: it inverts the stolen model into inputs of every class
and fine-tunes on them with the model's own soft labels. Written here in PyTorch; the
fine-tuning is the arena's training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.models import reinitialize_head
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import predict_logits, train
from attacks.removal.common import EPOCH_GRID, AttackerTraining

MAX_PER_CLASS = 10_000  # far above any use; more is a typo, refused before any work


@dataclass(frozen=True)
class DataFreeParams(AttackerTraining):
    images_per_class: int = param(
        50,
        help="synthetic inputs inverted from the stolen model per class",
        min=1,
        max=MAX_PER_CLASS,
    )
    synthesis_steps: int = param(200, help="Adam steps inverting each batch of inputs", min=1)
    synthesis_lr: float = param(0.1, help="Adam's learning rate on the input logits", above=0)
    synthesis_batch_size: int = param(100, help="inputs inverted together", min=1)
    bn_weight: float = param(
        0.1,
        help="weight of the BatchNorm statistics matching term (DeepInversion's R_feature)",
        min=0,
    )
    tv_weight: float = param(0.01, help="weight of the total-variation image prior", min=0)
    temperature: float = param(
        4.0, help="T of the stolen model's soft labels and of the fine-tuning loss", above=0
    )
    student: Literal["stolen", "fresh"] = param(
        "stolen", help="fine-tune the stolen model, or distil into a freshly initialised one"
    )
    reinitialize_head: bool = param(
        True, help="re-initialise the stolen model's output layer before fine-tuning"
    )
    lr: float = param(
        0.05, help="the fine-tuning learning rate: large, as REFIT finds removal needs", above=0
    )


@register_attack("data-free")
class DataFree(RemovalAttack):
    """Data-free removal by model inversion (in the spirit of Neural Dehydration, Lu et
    al., CCS 2024, and REFIT, Chen et al., AsiaCCS 2021; synthesis after DeepInversion).

    Synthesis: ``images_per_class`` inputs per class start as standard normal logits
    (pixels ``sigmoid(z)``, so every input stays in [0, 1]); Adam minimises the stolen
    model's cross-entropy to the input's class, plus ``bn_weight`` times the sum over
    every BatchNorm layer of the L2 distances between the batch's per-channel mean and
    variance at that layer's input and the layer's running statistics (DeepInversion's
    feature-distribution prior: the inputs must look, inside the network, like the data
    the model was trained on), plus ``tv_weight`` times the images' total variation. The
    model stays in eval mode and is not changed; each step shifts the batch by a random
    offset of up to 1/8 of the side (DeepInversion's jitter), so the inputs do not rely
    on exact pixel positions.

    Fine-tuning: the stolen model's softmax at temperature ``temperature`` on the
    synthetic inputs are the labels (queried once, before any weight changes); the
    stolen model itself (``student="stolen"``, REFIT's fine-tuning), its output layer
    re-initialised first (``reinitialize_head``), or a freshly initialised copy of its
    architecture (``"fresh"``, distillation) minimises T^2 times the cross-entropy to
    them, for the protocol's attack budget (``"stolen"``) or the owner's from-scratch
    budget (``"fresh"``). The protocol's data augmentation applies. No split of the
    protocol's data is read.

    Defaults: 50 inputs per class (500 on ten classes; Neural Dehydration and REFIT use
    thousands, a budget for a GPU), 200 Adam steps at 0.1 (DeepInversion's rate; its
    2,000 steps at 224 pixels are far more than small images need), BatchNorm weight 0.1
    (on smoke, seed 0, the stolen model answered 97% of the inputs with their intended
    class at 0.1, 51% at 1: the prior then outweighs the class), total variation 0.01
    (on [0, 1] pixels, a light smoothness prior), T = 4 (Hinton et al.'s), the output
    layer re-initialised (on smoke, seed 0: 16 of 20 triggers left against 19 without,
    at the same accuracy), and fine-tuning at 0.05, five times the attackers' usual
    0.01: REFIT's finding is that a large rate is what removes a mark. A fresh student
    learns too little from 500 inverted inputs (38-47% test accuracy on smoke, seed 0).

    Weakness: the fine-tuning runs in train mode, so the BatchNorm layers normalise with
    the inverted inputs' statistics and update their running ones from them. Where the
    inversion matches the data's statistics poorly this costs much accuracy: on the
    marked smoke models of seeds 0-2 the attack lost 0.5-5 points, but on an unmarked
    smoke model of seed 2 it fell from 92.5% to 59% (freezing the running statistics
    alone made it worse, 40%).
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Lu et al., ACM CCS 2024; Chen et al., AsiaCCS 2021; Yin et al., CVPR 2020"
    Params = DataFreeParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(
            data="none",
            labels="victim-soft",
            query_budget=self.params.images_per_class * ctx.num_classes,
            epochs=self._epochs(ctx),
        )

    def _epochs(self, ctx: Context) -> int:
        if self.params.epochs is not None:
            return self.params.epochs
        if self.params.student == "fresh":
            return ctx.protocol.training.epochs
        return ctx.protocol.attack_epochs

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        generator = ctx.generator(f"attack:{self.name}")
        images, classes, reached = synthesize(model, ctx, self.params, generator)
        temperature = self.params.temperature
        soft_labels = torch.softmax(predict_logits(model, images, ctx.device) / temperature, 1)
        student = (
            model
            if self.params.student == "stolen"
            else ctx.new_model(f"attack:{self.name}:student")
        )
        if self.params.reinitialize_head and self.params.student == "stolen":
            reinitialize_head(model, generator_seed=ctx.rng(f"attack:{self.name}").integers(2**62))
        report = train(
            student,
            images,
            soft_labels,
            self.params.settings(self._epochs(ctx)),
            device=ctx.device,
            generator=generator,
            description="data-free fine-tuning",
            progress=ctx.progress,
            augment=ctx.protocol.augment,
            temperature=temperature,
        )
        replaced = self.params.reinitialize_head and self.params.student == "stolen"
        return AttackOutcome(
            model=student,
            replaced_head=replaced,
            info={
                "summary": f"{len(images)} inverted inputs, {reached:.0%} answered as intended",
                "synthetic_images": len(images),
                "synthesis_success": reached,
                "student": self.params.student,
                "steps": report.steps,
            },
        )


def synthesize(
    model: nn.Module, ctx: Context, params: DataFreeParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Inputs inverted from ``model`` (``images_per_class`` per class, on the host), their
    intended classes, and the share of them ``model`` answers with that class."""
    protocol = ctx.protocol
    shape = (protocol.channels, protocol.image_size, protocol.image_size)
    classes = torch.arange(ctx.num_classes).repeat(params.images_per_class)
    batches = []
    model.to(ctx.device).eval()
    model.requires_grad_(False)  # only the inputs are optimised
    try:
        for start in range(0, len(classes), params.synthesis_batch_size):
            targets = classes[start : start + params.synthesis_batch_size]
            batches.append(_invert(model, targets, shape, params, generator, ctx.device))
    finally:
        model.requires_grad_(True)
    images = torch.cat(batches)
    answers = predict_logits(model, images, ctx.device).argmax(1)
    return images, classes, float((answers == classes).float().mean())


def _invert(
    model: nn.Module,
    targets: torch.Tensor,
    shape: tuple[int, int, int],
    params: DataFreeParams,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """One batch of inputs that ``model`` answers with ``targets`` and whose statistics at
    every BatchNorm layer match the layer's running ones."""
    logits = torch.randn((len(targets), *shape), generator=generator).to(device)
    logits.requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=params.synthesis_lr)
    labels = targets.to(device)
    statistics: list[torch.Tensor] = []

    def match(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        features = inputs[0]
        mean = features.mean(dim=(0, 2, 3))
        variance = features.var(dim=(0, 2, 3), unbiased=False)
        statistics.append(
            torch.linalg.vector_norm(mean - module.running_mean)
            + torch.linalg.vector_norm(variance - module.running_var)
        )

    norms = [
        m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
    ]
    handles = [norm.register_forward_hook(match) for norm in norms]
    jitter = max(1, shape[-1] // 8)
    try:
        for _ in range(params.synthesis_steps):
            dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            images = torch.sigmoid(logits)
            statistics.clear()
            output = model(torch.roll(images, shifts=(dy, dx), dims=(2, 3)))
            loss = F.cross_entropy(output, labels)
            if statistics:
                loss = loss + params.bn_weight * torch.stack(statistics).sum()
            loss = loss + params.tv_weight * _total_variation(images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    return torch.sigmoid(logits).detach().cpu()


def _total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, summed over both axes."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return vertical + horizontal
