"""What attacks of different families share: the attacker's own world."""

from __future__ import annotations

import dataclasses

from torch import nn

from arena.core.context import Context
from arena.core.data import Splits


def attacker_context(ctx: Context, purpose: str, stolen: nn.Module) -> Context:
    """The attacker's own world: its seed, its data split in the owner's place, and the
    stolen model where a scheme asks for the clean model (frontier stitching)."""
    splits = ctx.splits
    seed = int(ctx.rng(f"attack:{purpose}:keygen").integers(2**62))
    return dataclasses.replace(
        ctx,
        seed=seed,
        data=Splits(owner=splits.attacker, attacker=splits.attacker, test=splits.test),
        clean=lambda: stolen,
    )
