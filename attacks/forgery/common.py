"""What the forgeries share: a claim key shaped like the victim scheme's keys."""

from __future__ import annotations

import numpy as np

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.plugin import Requirements
from arena.util.jsonio import read_json

# Forgeries build a key of trigger images and labels: a white-box scheme's bit-string key
# has neither, so they do not apply to it.
TRIGGER_SET_KEYS = Requirements(
    key_type=TriggerKey, reason="its keys are bit strings of a white-box scheme, not trigger sets"
)


def claim_key(
    ctx: Context, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> TriggerKey:
    """A key of the victim's scheme (of its key type) over ``images`` and ``labels``.

    When the owner's published verification key pairs every trigger with a control input
    (single-target schemes), the forger adds controls too, the easiest ones to pass: images
    of its own data with their true labels.
    """
    controls = None
    if ctx.victim.vk is not None and "controls" in read_json(ctx.victim.vk):
        attacker = ctx.splits.attacker
        size = len(labels)
        chosen = rng.choice(len(attacker), size, replace=len(attacker) < size)
        control_images = (attacker.images[chosen].clamp(0, 1) * 255).round().byte().numpy()
        controls = (control_images, attacker.labels[chosen].numpy())
    key = TriggerKey.create(
        ctx.victim.scheme.name, ctx.num_classes, images, labels, controls=controls
    )
    return ctx.victim.scheme.key_type.forged(key, rng)
