"""Weight shifting: move every convolution filter against its own mean, add noise, then
fine-tune (Lukas, Jiang, Li, Kerschbaum, "SoK: How Robust is Image Classification Deep
Neural Network Watermarking?", IEEE S&P 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from attacks.removal.common import AttackerTraining, fine_tune, removal_threat_model


@dataclass(frozen=True)
class WeightShiftParams(AttackerTraining):
    strength: float = param(1.5, help="lambda: how far each filter moves against its mean", min=0)
    noise: float = param(
        1.0, help="nu: Gaussian noise, in units of the filter's standard deviation", min=0
    )


@register_attack("weight-shift")
class WeightShifting(RemovalAttack):
    """Weight shifting, a removal attack of Lukas et al. (SoK, IEEE S&P 2022).

    Every filter ``w_f`` (one output channel) of every Conv2d becomes

        w_f - strength * mean(w_f) + noise * std(w_f) * z_f,    z_f ~ N(0, I),

    with the mean and (population) standard deviation taken over the filter's own
    weights, then the whole model is fine-tuned on the attacker's split for ``epochs``
    (default: the protocol's attack budget). The defaults, strength 1.5 and noise 1.0, are
    those of the SoK's released CIFAR-10 configuration; its code subtracts the layer's
    element-wise mean filter and scales the noise by the layer's standard deviation,
    where this module follows the per-filter description.
    """

    budget_curve = Budget("strength", (0.5, 1.0, 1.5, 2.0, 3.0))

    paper = "Lukas et al., IEEE S&P 2022"
    Params = WeightShiftParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return removal_threat_model(self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        noise_stream = ctx.generator(f"attack:{self.name}:noise")
        shift_filters(model, self.params.strength, self.params.noise, noise_stream)
        epochs = self.params.budget(ctx)
        steps = 0
        if epochs > 0:
            steps = fine_tune(model, ctx, self.params.settings(epochs), self.name).steps
        return AttackOutcome(model=model, info={"steps": steps})


@torch.no_grad()
def shift_filters(
    model: nn.Module, strength: float, noise: float, generator: torch.Generator
) -> None:
    """Apply the weight-shifting formula in place to every Conv2d filter of ``model``."""
    for layer in model.modules():
        if not isinstance(layer, nn.Conv2d):
            continue
        weight = layer.weight
        filters = weight.flatten(start_dim=1)
        mean = filters.mean(dim=1, keepdim=True)
        std = filters.std(dim=1, keepdim=True, correction=0)
        # Drawn on the CPU, so the same seed gives the same noise on every device.
        gaussian = torch.randn(filters.shape, generator=generator).to(weight)
        shifted = filters - strength * mean + noise * std * gaussian
        weight.copy_(shifted.view_as(weight))
