"""Fine-pruning: prune the channels of the last convolution that stay dormant on clean
data, then fine-tune (Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against
Backdooring Attacks on Deep Neural Networks", RAID 2018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from arena.core.context import Context
from arena.core.models import find_layer
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from arena.util.errors import ArenaError
from attacks.removal.common import AttackerTraining, fine_tune, removal_threat_model

# Path components of residual shortcut projections in timm models: not the layer whose
# neurons the paper prunes, even where one runs last.
SHORTCUTS = {"downsample", "shortcut"}


@dataclass(frozen=True)
class FinePruneParams(AttackerTraining):
    fraction: float = param(
        0.9,
        help="of the layer's output channels, pruned the least active first",
        above=0,
        below=1,
    )
    layer: str = param(
        "", help='module path of the convolution; "": the last one outside shortcuts'
    )


@register_attack("fine-prune")
class FinePruning(RemovalAttack):
    """Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018).

    The mean activation of every output channel of the last convolution (after its
    BatchNorm, if one follows, and a ReLU) is recorded with a forward hook on the
    attacker's images; the least active ``fraction`` of the channels is masked to zero and
    kept zero while the model is fine-tuned on the attacker's split for ``epochs`` (default:
    the protocol's attack budget), then the mask is made permanent.

    The paper prunes in order of activation until clean validation accuracy drops by 4
    points, which removes most of the last layer; the SoK (Lukas et al., IEEE S&P 2022)
    configuration prunes a fixed ratio of 0.96. The default here is a fixed 0.9.
    """

    budget_curve = Budget("fraction", (0.5, 0.7, 0.8, 0.9, 0.95))

    paper = "Liu, Dolan-Gavitt and Garg, RAID 2018"
    Params = FinePruneParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return removal_threat_model(self.params.budget(ctx), reads_data=True)

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        path = self.params.layer or last_convolution(model)
        conv = find_layer(model, path)
        if not isinstance(conv, nn.Conv2d):
            raise ArenaError(f"fine-prune needs a Conv2d; {path!r} is a {type(conv).__name__}")
        activity = mean_activations(model, path, ctx.splits.attacker.images, ctx.device)
        count = math.floor(self.params.fraction * conv.out_channels)
        pruned = torch.argsort(activity, stable=True)[:count].sort().values
        masked = ["weight"] + (["bias"] if conv.bias is not None else [])
        for name in masked:
            mask = torch.ones_like(getattr(conv, name))
            mask[pruned] = 0
            prune.custom_from_mask(conv, name, mask)
        epochs = self.params.budget(ctx)
        steps = 0
        if epochs > 0:  # the mask holds the pruned channels at zero while fine-tuning
            steps = fine_tune(model, ctx, self.params.settings(epochs), self.name).steps
        for name in masked:
            prune.remove(conv, name)
        info = {
            "summary": f"{count} of {conv.out_channels} channels of {path} pruned",
            "layer": path,
            "channels": conv.out_channels,
            "pruned_count": count,
            "pruned_channels": pruned.tolist(),
            "steps": steps,
        }
        return AttackOutcome(model=model, info=info)


def last_convolution(model: nn.Module) -> str:
    """The module path of the last Conv2d in ``named_modules()`` order, shortcuts aside."""
    paths = [
        path
        for path, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and not SHORTCUTS & set(path.split("."))
    ]
    if not paths:
        raise ArenaError(f"{type(model).__name__} has no Conv2d to fine-prune")
    return paths[-1]


@torch.no_grad()
def mean_activations(
    model: nn.Module, path: str, images: torch.Tensor, device: torch.device, batch: int = 256
) -> torch.Tensor:
    """Mean ReLU activation of each output channel of the convolution at ``path``."""
    conv = find_layer(model, path)
    modules = list(model.named_modules())
    after = next((m for (p, _), (_, m) in zip(modules, modules[1:]) if p == path), None)
    # The neuron's activation is after its normalization, when one follows the convolution.
    follows = isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels
    site = after if follows else conv
    total = torch.zeros(conv.out_channels, dtype=torch.float64)

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        total.add_(F.relu(output).mean(dim=(2, 3)).sum(dim=0).double().cpu())

    model.eval().to(device)
    handle = site.register_forward_hook(record)
    try:
        for start in range(0, len(images), batch):
            model(images[start : start + batch].to(device))
    finally:
        handle.remove()
    return total / max(1, len(images))
