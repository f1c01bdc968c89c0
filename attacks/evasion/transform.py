"""What the input-transformation attacks share: the model served behind an ART
preprocessor that rewrites every query before the model sees it.

Guo et al., "Countering Adversarial Images using Input Transformations", ICLR 2018, and
Xu et al., "Feature Squeezing", NDSS 2018, proposed these filters against adversarial
examples; a pirate can put the same filters in front of a stolen model to blunt trigger
queries (evasion of verification) while ordinary inputs pass almost unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from arena.core.context import Context
from arena.core.plugin import AttackOutcome, QueryAttack, ThreatModel


class InputTransformAttack(QueryAttack):
    """Base class: ``run`` keeps the weights, ``serve`` puts ``preprocessor`` in front."""

    threat = "evasion"

    def preprocessor(self) -> Any:
        """The ART preprocessor over float (N, C, H, W) inputs in [0, 1]."""
        raise NotImplementedError

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="none", labels="none", query_budget=None, epochs=0)

    def prepare(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        return AttackOutcome(model=model)

    def serve(self, model: nn.Module, ctx: Context) -> nn.Module:
        return TransformedModel(model, self.preprocessor())


class TransformedModel(nn.Module):
    """``model`` behind a numpy preprocessor; deterministic, no parameters of its own."""

    def __init__(self, model: nn.Module, preprocessor: Any) -> None:
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().numpy()
        transformed, _ = self.preprocessor(array)
        return torch.as_tensor(transformed, dtype=images.dtype, device=images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(images))
