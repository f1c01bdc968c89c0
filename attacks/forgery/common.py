"""What the forgeries share: a claim key shaped like the victim scheme's keys."""

from __future__ import annotations

import numpy as np

from arena.context import Context
from arena.keys import TriggerKey, read_json


def claim_key(
    ctx: Context, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> TriggerKey:
    """A key of the victim's scheme over ``images`` and ``labels``.

    When the owner's published verification key pairs every trigger with a control input
    (single-target schemes), the forger adds controls too, the easiest ones to pass: images
    of its own data with their true labels.
    """
    controls = None
    if ctx.victim_vk is not None and "controls" in read_json(ctx.victim_vk):
        attacker = ctx.splits.attacker
        size = len(labels)
        chosen = rng.choice(len(attacker), size, replace=len(attacker) < size)
        control_images = (attacker.images[chosen].clamp(0, 1) * 255).round().byte().numpy()
        controls = (control_images, attacker.labels[chosen].numpy())
    return TriggerKey.create(
        ctx.victim_scheme.name, ctx.num_classes, images, labels, controls=controls
    )
