"""Weight quantization: round every Conv2d and Linear weight to a b-bit uniform grid,
optionally fine-tune and round again (the removal attack of Lukas et al., "SoK: How Robust
is Image Classification Deep Neural Network Watermarking?", IEEE S&P 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from attacks.removal.common import (
    MAX_EPOCHS,
    AttackerTraining,
    fine_tune,
    removal_threat_model,
)


@dataclass(frozen=True)
class QuantizeParams(AttackerTraining):
    epochs: int | None = param(
        0,
        help="fine-tuning epochs between two roundings; 0: none, None: the protocol's",
        min=0,
        max=MAX_EPOCHS,
    )
    bits: int = param(4, help="bits per weight (a symmetric grid needs 2)", min=2, max=16)


@register_attack("quantize")
class WeightQuantization(RemovalAttack):
    """Uniform symmetric per-tensor weight quantization (Lukas et al., IEEE S&P 2022).

    Each Conv2d and Linear weight tensor ``w`` is replaced by ``round(w / s) * s`` clamped
    to ``[-L s, L s]``, with ``L = 2^(bits-1) - 1`` and ``s = max|w| / L``: at most
    ``2^bits - 1`` distinct values per tensor. With ``epochs`` the model is fine-tuned on
    the attacker's split and quantized again, so the weights it hands back are b-bit.

    Bit widths in the literature: 8 (the common deployment format, usually harmless) and
    4 (aggressive). The SoK's released CIFAR-10 configuration uses 5 bits and one epoch of
    fine-tuning. The default is 4 bits without fine-tuning.
    """

    budget_curve = Budget("bits", (8, 6, 4, 3, 2))

    paper = "Lukas et al., IEEE S&P 2022"
    Params = QuantizeParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return removal_threat_model(self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        max_error = quantize_weights(model, self.params.bits)
        epochs = self.params.budget(ctx)
        steps = 0
        if epochs > 0:
            steps = fine_tune(model, ctx, self.params.settings(epochs), self.name).steps
            max_error = quantize_weights(model, self.params.bits)
        info = {"bits": self.params.bits, "max_abs_error": max_error, "steps": steps}
        return AttackOutcome(model=model, info=info)


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: int) -> float:
    """Quantize in place; returns the largest change of any single weight."""
    largest = 2 ** (bits - 1) - 1
    max_error = 0.0
    for layer in model.modules():
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            continue
        weight = layer.weight
        step = weight.abs().max() / largest
        if step == 0:
            continue  # an all-zero tensor is already on every grid
        rounded = torch.round(weight / step).clamp(-largest, largest) * step
        max_error = max(max_error, float((rounded - weight).abs().max()))
        weight.copy_(rounded)
    return max_error
