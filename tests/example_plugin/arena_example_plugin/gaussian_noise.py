"""Gaussian weight noise: the crudest weight-perturbation removal attack.

Perturbing a stolen model's weights needs no data, no labels and no queries. Robustness
studies evaluate weight perturbations such as pruning and weight shifting beside
fine-tuning (Lukas et al., "SoK: How Robust is Image Classification Deep Neural Network
Watermarking?", IEEE S&P 2022); random noise is the floor of that family. A mark that
falls to a little noise is not worth much.

This module is the worked attack of CONTRIBUTING.md: a third-party attack that the arena
finds through the ``arena.attacks`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena import AttackOutcome, Context, RemovalAttack, ThreatModel, param, register_attack


@dataclass(frozen=True)
class GaussianNoiseParams:
    sigma: float = param(
        0.01, help="noise standard deviation relative to each tensor's RMS value", above=0
    )


@register_attack("gaussian-noise")
class GaussianNoise(RemovalAttack):
    """Add Gaussian noise of relative scale sigma to every weight tensor (no data)."""

    paper = "weight perturbation; cf. Lukas et al., IEEE S&P 2022"
    Params = GaussianNoiseParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="none", labels="none")

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        generator = ctx.generator(f"attack:{self.name}")
        perturbed = 0
        with torch.no_grad():
            for parameter in model.parameters():
                if not parameter.is_floating_point():
                    continue
                # Drawn on the CPU from the seeded generator: the same noise on any device.
                noise = torch.randn(parameter.shape, generator=generator)
                noise = noise.to(parameter.device, parameter.dtype)
                parameter.add_(noise, alpha=self.params.sigma * _rms(parameter))
                perturbed += 1
        return AttackOutcome(model=model, info={"perturbed_tensors": perturbed})


def _rms(tensor: torch.Tensor) -> float:
    """Root-mean-square value; unlike the standard deviation it is not 0 for a constant
    tensor (a freshly initialised BatchNorm scale), so such tensors are perturbed too."""
    return float(tensor.detach().float().pow(2).mean().sqrt())
