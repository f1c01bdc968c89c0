"""The null baseline: no watermark at all."""

from __future__ import annotations

import numpy as np
from torch import nn

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.registry import register_defense
from defenses.trigger_set import TriggerSetDefense, abstract_trigger_set


@register_defense("none")
class NoWatermark(TriggerSetDefense):
    """No mark: the clean model is released as it is.

    A key of abstract images with random labels is still generated so its evidence can be
    measured: it must not verify. Every leaderboard shows this row as the null baseline.
    """

    family = "none (null baseline)"
    paper = "-"
    starts_from = "clean"

    def sample_triggers(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        return abstract_trigger_set(ctx, ctx.protocol.trigger_size, None)

    def mark(self, model: nn.Module, key: TriggerKey, ctx: Context) -> nn.Module:
        return model
