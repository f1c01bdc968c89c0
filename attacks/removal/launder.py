"""Aiken, Kim, Woo and Ryu, "Neural Network Laundering: Removing Black-Box Backdoor
Watermarks from Deep Neural Networks", Computers & Security, 2021.

Laundering reconstructs trigger-like inputs, resets the neurons they excite far more
than clean data does, and retrains on the little data the attacker has. The
reconstruction is Neural Cleanse's (``attacks/removal/reversal.py``, shared with
``neural-cleanse``); the neuron test, the reset and the retraining are written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arena.core.context import Context
from arena.core.models import find_layer
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.core.training import train
from arena.util.errors import ArenaError
from attacks.removal.common import EPOCH_GRID, AttackerTraining
from attacks.removal.reversal import TriggerReversal, reverse_triggers, stamp, trigger_success

# Path components of residual shortcut projections in timm models: their channels are
# the block's bypass, not neurons of the convolution stage the paper examines.
SHORTCUTS = {"downsample", "shortcut"}


@dataclass(frozen=True)
class LaunderParams(AttackerTraining):
    reversal_steps: int = param(
        150, help="Adam steps reconstructing the triggers (Neural Cleanse's)", min=1
    )
    reversal_batch_size: int = param(16, help="attacker images per class and step", min=1)
    reversal_lr: float = param(0.2, help="Adam's learning rate for masks and patterns", above=0)
    l1_weight: float = param(0.05, help="weight of a mask's L1 norm in its reversal", min=0)
    layers: int = param(
        2, help="the last this many convolutions (shortcuts aside) whose channels are tested", min=1
    )
    ratio: float = param(
        2.0,
        help="a channel is reset when a reconstructed trigger raises its mean activation "
        "to more than this many times its clean mean",
        above=1,
    )
    max_fraction: float = param(
        0.1,
        help="at most this share of a layer's channels is reset, the most excited first",
        above=0,
        max=1,
    )
    unlearn_fraction: float = param(
        0.2,
        help="attacker images retrained on with a reconstructed trigger under their true label",
        min=0,
        max=1,
    )
    data_fraction: float = param(
        1.0,
        help="share of the attacker's split retrained on (the limited-data setting)",
        above=0,
        max=1,
    )

    def reversal(self) -> TriggerReversal:
        return TriggerReversal(
            steps=self.reversal_steps,
            batch_size=self.reversal_batch_size,
            lr=self.reversal_lr,
            l1_weight=self.l1_weight,
        )


@register_attack("launder")
class Laundering(RemovalAttack):
    """Neural network laundering (Aiken et al., Computers & Security 2021).

    1. Reconstruct: for every class, Neural Cleanse's mask and pattern that send the
       attacker's images to it (a trigger set with labels spread over the classes makes
       every class a possible target, so all are kept, none flagged).
    2. Detect: in the last ``layers`` convolutions (outside residual shortcuts), each
       output channel's mean activation (after its BatchNorm and a ReLU) on the
       attacker's clean images is compared with its mean on the same images stamped with
       each class's reconstructed trigger. A channel whose stamped mean exceeds ``ratio``
       times its clean mean (a dormant channel's clean mean is floored at 1% of the
       layer's mean, so waking it counts) for some class is a watermark neuron; at most
       ``max_fraction`` of a layer's channels are taken, the most excited first.
    3. Reset: those channels' filters, and their BatchNorm scale and shift, are zeroed.
       A zero filter behind a zero scale gets no gradient, so retraining cannot revive
       it: the channel stays a constant (its shift alone relearns), as a pruned neuron.
    4. Retrain: fine-tune every layer on ``data_fraction`` of the attacker's split with
       true labels, ``unlearn_fraction`` of those images stamped with a reconstructed
       trigger (classes in turn), for the protocol's attack budget.

    Defaults: the reversal is Neural Cleanse's (150 Adam steps at 0.2, L1 weight 0.05,
    both of that module); the ratio 2 and the 10% cap are ours (the paper thresholds
    activation differences per data set); the unlearning share 0.2 is Neural Cleanse's;
    the retraining optimizer is the attackers' common one (SGD at 0.01). The attacker's
    split is already the limited data of the paper's setting (200 images on smoke, 1,000
    on mnist5k); ``data_fraction`` shrinks it further.
    """

    budget_curve = Budget("epochs", EPOCH_GRID)

    paper = "Aiken et al., Computers & Security 2021"
    Params = LaunderParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="true", epochs=self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        paths = last_convolutions(model, self.params.layers)  # refused before any work
        attacker = ctx.splits.attacker
        # A stream of its own, so the reversal draws the same whatever data_fraction is.
        subset = ctx.generator(f"attack:{self.name}:subset")
        keep = torch.randperm(len(attacker), generator=subset)
        keep = keep[: max(1, round(self.params.data_fraction * len(attacker)))].sort().values
        images, labels = attacker.images[keep], attacker.labels[keep]
        generator = ctx.generator(f"attack:{self.name}")
        masks, patterns = reverse_triggers(
            model, images, ctx.num_classes, self.params.reversal(), generator, ctx.device
        )
        success = [
            trigger_success(model, images, masks[k], patterns[k], k) for k in range(ctx.num_classes)
        ]
        clean = channel_means(model, paths, images, ctx.device)
        stamped = [
            channel_means(model, paths, stamp(images, masks[k], patterns[k]), ctx.device)
            for k in range(ctx.num_classes)
        ]
        reset = {}
        for path in paths:
            excitation = torch.stack([means[path] for means in stamped]).amax(0)
            reset[path] = excited_channels(
                clean[path], excitation, self.params.ratio, self.params.max_fraction
            )
            reset_channels(model, path, reset[path])
        retrain_images = images.clone()
        chosen = torch.randperm(len(images), generator=generator)
        chosen = chosen[: round(self.params.unlearn_fraction * len(images))]
        for position, row in enumerate(chosen.tolist()):
            target = position % ctx.num_classes
            retrain_images[row] = stamp(images[row], masks[target], patterns[target])
        report = train(
            model,
            retrain_images,
            labels,  # true labels: the reconstructed triggers must stop mattering
            self.params.settings(self.params.budget(ctx)),
            device=ctx.device,
            generator=generator,
            description="laundering retraining",
            progress=ctx.progress,
            augment=ctx.protocol.augment,
        )
        total = sum(len(channels) for channels in reset.values())
        return AttackOutcome(
            model=model,
            info={
                "summary": f"{total} channels reset in {', '.join(paths)}",
                "reset_channels": {path: channels for path, channels in reset.items()},
                "mask_l1_norms": masks.flatten(1).sum(1).tolist(),
                "reversed_trigger_success": success,
                "retrained_images": len(images),
                "stamped_images": len(chosen),
                "steps": report.steps,
            },
        )


def last_convolutions(model: nn.Module, count: int) -> list[str]:
    """The module paths of the last ``count`` Conv2d in ``named_modules()`` order,
    shortcuts aside."""
    paths = [
        path
        for path, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and not SHORTCUTS & set(path.split("."))
    ]
    if len(paths) < count:
        raise ArenaError(
            f"launder: layers={count} but {type(model).__name__} has {len(paths)} "
            "convolutions outside its shortcuts; choose layers <= that"
        )
    return paths[-count:]


def _activation_site(model: nn.Module, path: str) -> tuple[nn.Conv2d, nn.Module]:
    """The convolution at ``path`` and where its neurons' activations are read: the
    BatchNorm right after it, when one follows, else the convolution itself."""
    conv = find_layer(model, path)
    modules = list(model.named_modules())
    after = next((m for (p, _), (_, m) in zip(modules, modules[1:]) if p == path), None)
    if isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels:
        return conv, after
    return conv, conv


@torch.no_grad()
def channel_means(
    model: nn.Module,
    paths: list[str],
    images: torch.Tensor,
    device: torch.device,
    batch: int = 256,
) -> dict[str, torch.Tensor]:
    """Per convolution at ``paths``, the mean ReLU activation of each output channel."""
    totals: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        conv, site = _activation_site(model, path)
        totals[path] = torch.zeros(conv.out_channels, dtype=torch.float64)

        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor, path=path) -> None:
            totals[path].add_(F.relu(output).mean(dim=(2, 3)).sum(dim=0).double().cpu())

        handles.append(site.register_forward_hook(record))
    model.eval().to(device)
    try:
        for start in range(0, len(images), batch):
            model(images[start : start + batch].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {path: total / max(1, len(images)) for path, total in totals.items()}


def excited_channels(
    clean: torch.Tensor, excited: torch.Tensor, ratio: float, max_fraction: float
) -> list[int]:
    """The channels whose ``excited`` mean exceeds ``ratio`` times their ``clean`` mean
    (floored at 1% of the layer's mean), at most ``max_fraction`` of them, most excited
    first; sorted."""
    floor = max(float(clean.mean()) * 0.01, 1e-12)
    elevation = excited / clean.clamp(min=floor)
    order = torch.argsort(elevation, descending=True, stable=True)
    cap = math.floor(max_fraction * len(clean))
    chosen = [int(c) for c in order[:cap] if elevation[c] > ratio]
    return sorted(chosen)


@torch.no_grad()
def reset_channels(model: nn.Module, path: str, channels: list[int]) -> None:
    """Zero ``channels`` of the convolution at ``path``: their filters, bias and the
    following BatchNorm's scale and shift."""
    if not channels:
        return
    conv, site = _activation_site(model, path)
    index = torch.as_tensor(channels, dtype=torch.long)
    conv.weight[index] = 0
    if conv.bias is not None:
        conv.bias[index] = 0
    if isinstance(site, nn.BatchNorm2d) and site.affine:
        site.weight[index] = 0
        site.bias[index] = 0
