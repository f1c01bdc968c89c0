"""Forgery from the verification key alone: open commitments without the marking key.
Adi et al., "Turning Your Weakness Into a Strength", USENIX Security 2018, Section 3
(unforgeability: knowing vk, and even the model, must not let anyone produce mk).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.data import to_model_input
from arena.core.keys import (
    NONCE_BYTES,
    TriggerKey,
    VerificationKey,
    commit,
    encode_image,
    encode_label,
)
from arena.core.params import param
from arena.core.plugin import (
    AttackOutcome,
    ClaimAttack,
    ClaimAttempt,
    Requirements,
    ThreatModel,
)
from arena.core.registry import register_attack
from arena.core.training import predict
from arena.util.jsonio import read_json


@dataclass(frozen=True)
class FromVkParams:
    tries: int = param(
        200,
        help="random nonces tried per commitment (per label, for label commitments)",
        min=1,
    )


@register_attack("forge-from-vk")
class ForgeFromVk(ClaimAttack):
    """Claim the model with the owner's own published key, guessing its openings.

    The attacker holds the owner's ``vk`` (registered first, so ledger order would pass)
    and the stolen model, not ``mk``. For each trigger it guesses an opening: an image of
    its own data and the label the model gives it (which the model would then answer,
    so the agreement test would pass), searching ``tries`` random 32-byte nonces per
    image commitment and per label commitment and every label. A match is a SHA-256
    preimage; the search counts its hash evaluations and what it found (nothing: 2^-256
    per try). It then claims with its best guesses, and the arena's opening check
    (``mk`` must open every commitment of ``vk``) rejects the claim, naming the first
    commitment that does not open. The forgery succeeds only if every commitment opens
    to the value the attacker chose, which the commitments' binding property forbids.
    """

    threat = "forgery"
    paper = "Adi et al., USENIX Security 2018 (unforgeability)"
    Params = FromVkParams

    requires = Requirements(
        key_type=TriggerKey,
        reason="its key commits to a projection and bits, not to trigger images and labels",
    )

    def threat_model(self, ctx: Context) -> ThreatModel:
        return ThreatModel(data="attacker-split", labels="victim-top1", epochs=0)

    def claim(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        vk = VerificationKey.from_dict(read_json(ctx.victim.vk), source=str(ctx.victim.vk))
        rng = ctx.rng(f"attack:{self.name}")
        images = _guess_images(ctx, vk, rng)
        inputs = to_model_input(images, ctx.protocol.image_size, ctx.protocol.channels)
        labels = predict(model, inputs, ctx.device).numpy()
        started = time.perf_counter()
        image_nonces, label_nonces, tried, opened = [], [], 0, 0
        for index in range(len(images)):
            nonce, count, found = _search(
                vk.image_commitments[index], [encode_image(images[index])], self.params.tries
            )
            image_nonces.append(nonce)
            tried, opened = tried + count, opened + found
            candidates = [encode_label(label) for label in range(vk.num_classes)]
            nonce, count, found = _search(
                vk.label_commitments[index], candidates, self.params.tries
            )
            label_nonces.append(nonce)
            tried, opened = tried + count, opened + found
        key = TriggerKey(
            vk.scheme, vk.num_classes, images, labels, tuple(image_nonces), tuple(label_nonces), vk
        )
        key = ctx.victim.scheme.key_type.forged(key, rng, read_json(ctx.victim.vk))
        return AttackOutcome(
            model=model,
            info={
                "summary": f"{opened} of {2 * len(images)} commitments opened in {tried:,} "
                "SHA-256 tries",
                "hash_evaluations": tried,
                "commitments_opened": opened,
                "search_seconds": time.perf_counter() - started,
            },
            claim=ClaimAttempt(key, "after-theft"),
        )


def _guess_images(ctx: Context, vk: VerificationKey, rng: np.random.Generator) -> np.ndarray:
    """The attacker's candidate trigger images: its own data when shapes agree, else noise."""
    count = len(vk.image_commitments)
    attacker = ctx.splits.attacker.images
    if tuple(attacker.shape[1:]) == vk.image_shape:
        chosen = rng.choice(len(attacker), count, replace=len(attacker) < count)
        return (attacker[chosen] * 255).round().to(torch.uint8).numpy()
    return rng.integers(0, 256, (count, *vk.image_shape), dtype=np.uint8)


def _search(commitment: str, encodings: list[bytes], tries: int) -> tuple[bytes, int, int]:
    """Random nonces against one commitment: (a nonce, hash evaluations, openings found)."""
    evaluations = 0
    for _ in range(tries):
        nonce = secrets.token_bytes(NONCE_BYTES)
        for encoding in encodings:
            evaluations += 1
            if commit(nonce, encoding) == commitment:
                return nonce, evaluations, 1
    return nonce, evaluations, 0
