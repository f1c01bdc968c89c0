"""Szyller, Atli, Marchal, Asokan, "DAWN: Dynamic Adversarial Watermarking of Neural
Networks", ACM Multimedia 2021. https://arxiv.org/abs/1906.00830
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from arena.core.context import Context
from arena.core.keys import NONCE_BYTES, TriggerKey, VerificationKey, commit
from arena.core.params import param
from arena.core.registry import register_defense
from arena.core.training import predict
from arena.util.errors import ArenaError, KeyTamperedError
from defenses.trigger_set import TriggerSetDefense

SECRET_BYTES = 32
SECRET_TAG = b"arena-dawn-secret/1"  # prefix of the committed secret's bytes
QUERY_TAG = b"arena-dawn-query/1"  # prefix of every query's HMAC input


@dataclass(frozen=True)
class DawnParams:
    fraction: float = param(
        0.02,
        help="share of queries answered with a keyed wrong label (the paper's: under 0.5%, "
        "for clients of tens of thousands of queries)",
        above=0,
        max=0.5,
    )


# --- the key ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DawnVerificationKey(VerificationKey):
    """A trigger-set verification key that also commits to the API's secret."""

    secret_commitment: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "secret": self.secret_commitment}

    @classmethod
    def from_dict(
        cls, record: dict[str, Any], source: str = "verification key"
    ) -> DawnVerificationKey:
        vk = super().from_dict(record, source)
        digest = record.get("secret")
        if not (isinstance(digest, str) and len(digest) == 64 and _is_hex(digest)):
            raise KeyTamperedError(
                f"{source} is malformed: it commits to no API secret ('secret'), which a "
                "dawn key needs"
            )
        return dataclasses.replace(vk, secret_commitment=digest)


@dataclass(frozen=True, eq=False)
class DawnKey(TriggerKey):
    """A DAWN key: the watermark set one client's queries drew (the queries the API
    answered wrongly, with those answers), committed like any trigger set, and the API's
    HMAC secret with its commitment, which decides every answer. The owner's own key
    (``keygen``) is a reference client's set: the owner's and the test images queried
    through the API."""

    secret: bytes = b""
    secret_nonce: bytes = b""

    # The labels are chosen with the owner's model: no public proof is checked on them.
    public_verification: ClassVar[bool] = False

    @classmethod
    def create_with_secret(
        cls,
        scheme: str,
        num_classes: int,
        images: np.ndarray,
        labels: np.ndarray,
        secret: bytes,
    ) -> DawnKey:
        key = TriggerKey.create(scheme, num_classes, images, labels)
        nonce = secrets.token_bytes(NONCE_BYTES)
        vk = DawnVerificationKey(
            **{f.name: getattr(key.vk, f.name) for f in dataclasses.fields(VerificationKey)},
            secret_commitment=commit(nonce, SECRET_TAG + secret),
        )
        fields = {f.name: getattr(key, f.name) for f in dataclasses.fields(TriggerKey)}
        return cls(**{**fields, "vk": vk}, secret=secret, secret_nonce=nonce)

    def open(self, vk: VerificationKey | None = None) -> None:
        vk = vk or self.vk
        super().open(vk)
        committed = getattr(vk, "secret_commitment", "")
        if commit(self.secret_nonce, SECRET_TAG + self.secret) != committed:
            raise KeyTamperedError(
                "the API secret does not open its commitment; the marking key or the "
                "verification key was altered"
            )

    def marking_key_dict(self) -> dict[str, Any]:
        return {
            **super().marking_key_dict(),
            "secret": self.secret.hex(),
            "secret_nonce": self.secret_nonce.hex(),
        }

    vk_type = DawnVerificationKey

    def _read_extras(self, record: dict[str, Any]) -> DawnKey:
        return dataclasses.replace(
            self,
            secret=bytes.fromhex(record["secret"]),
            secret_nonce=bytes.fromhex(record["secret_nonce"]),
        )


# --- the API ---------------------------------------------------------------------------


class DawnAPI(nn.Module):
    """The owner's prediction API: the model's answers, except for the queries whose keyed
    hash falls under ``fraction``, which get a keyed wrong class instead (the logits of
    the model's answer and that class swapped, so probabilities stay a permutation of the
    model's). The same query always gets the same answer. Every query answered wrongly is
    recorded, once, with its answer: the client's watermark set."""

    def __init__(self, model: nn.Module, secret: bytes, fraction: float) -> None:
        super().__init__()
        self.model = model
        self.secret, self.fraction = secret, fraction
        self.queries = 0
        self.log: dict[bytes, tuple[np.ndarray, int]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        quantized = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        answers = logits.detach().argmax(dim=1).cpu()
        self.queries += len(images)
        classes = logits.shape[1]
        chosen, offsets = watermarked(quantized.numpy(), self.secret, self.fraction, classes)
        if not chosen.any():
            return logits
        rows = torch.as_tensor(np.flatnonzero(chosen))
        wrong = (answers[rows] + torch.as_tensor(offsets[chosen])) % classes
        swapped = logits.clone()
        right_col, wrong_col = answers[rows].to(logits.device), wrong.to(logits.device)
        rows_dev = rows.to(logits.device)
        swapped[rows_dev, right_col] = logits[rows_dev, wrong_col]
        swapped[rows_dev, wrong_col] = logits[rows_dev, right_col]
        for row, label in zip(rows.tolist(), wrong.tolist()):
            image = quantized[row].numpy()
            self.log.setdefault(hashlib.sha256(image.tobytes()).digest(), (image, int(label)))
        return swapped

    def watermark_set(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The queries answered wrongly and their answers, in the order first asked."""
        if not self.log:
            return None
        images, labels = zip(*self.log.values())
        return np.stack(images), np.array(labels, dtype=np.int64)


def watermarked(
    images: np.ndarray, secret: bytes, fraction: float, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per uint8 query: is it answered wrongly (its HMAC-SHA256 under ``secret``, read as a
    number in [0, 1), below ``fraction``), and the offset 1..num_classes-1 added to the
    model's answer (modulo the classes) when it is: uniform over the other classes."""
    chosen = np.zeros(len(images), dtype=bool)
    offsets = np.zeros(len(images), dtype=np.int64)
    for index, image in enumerate(images):
        digest = hmac.new(secret, QUERY_TAG + image.tobytes(), hashlib.sha256).digest()
        chosen[index] = int.from_bytes(digest[:8], "big") / 2**64 < fraction
        offsets[index] = 1 + int.from_bytes(digest[8:16], "big") % (num_classes - 1)
    return chosen, offsets


# --- the scheme ----------------------------------------------------------------------


@register_defense("dawn")
class Dawn(TriggerSetDefense):
    """DAWN: a watermark that lives in the owner's prediction API (Szyller et al., ACM MM
    2021).

    The model is not changed (Mark is the trained clean model as it is). The owner's API
    answers a keyed ``fraction`` of queries with a wrong class: for each query, HMAC-SHA256
    under the API's secret decides whether it is one (the hash, read as a number in
    [0, 1), below ``fraction``) and which wrong class it gets (uniform over the other
    classes), so the choice is deterministic per query and unpredictable without the
    secret. A client who trains a model on the answers (extraction) learns those wrong
    answers too; the owner keeps them (the client's watermark set) and verifies the
    client's model on it. A match hands extraction attacks (``Attack.holds_weights``
    False: distill, knockoff, retrain) the API instead of the model, and measures the
    attacked model on the key built from that client's queries; attacks on the weights
    are outside the threat model (the model never leaves the API) and are not played.

    Evidence: of the n queries of a client's watermark set, how many the model answers
    with the API's wrong answer. Null: a model trained without the API's answers agrees
    with each with probability at most 1/(K-1), since the wrong class is uniform over the
    K-1 classes other than the API model's answer and independent of that model: exact as
    a bound, conservative where the model disagrees with the API's model. The owner's own
    evidence (a reference client): the owner's and the test images queried through the
    API (2% of mnist5k's 4,000: about 80 wrong answers); the API
    answers its watermark set with the wrong answers by construction, and the clean model
    at most by chance. Test accuracy of the marked row is the API's: the share of wrong
    answers is what every honest client pays.

    Adapted, and why:
    - ``fraction`` 0.02 (the paper: under 0.5%, for clients of tens of thousands of
      queries, and evidence at 1 - 2^-64 confidence). An attacker of mnist5k queries 1,000
      images: 0.5% would leave about 5 watermarked answers, 2% about 20, at a cost of 2
      points of the API's accuracy.
    - The paper filters which queries may be watermarked and maps each client to its own
      key; the arena serves one client per match, so one secret serves it.
    - The wrong answer swaps the logits of the model's answer and the keyed class, so
      attackers learning probabilities (distillation) see a consistent vector.
    """

    family = "API (keyed wrong answers to a fraction of queries)"
    paper = "Szyller et al., ACM MM 2021"
    Params = DawnParams
    key_type = DawnKey
    starts_from = "clean"
    serves = True
    # The wrong class is uniform over the classes other than the API model's answer, and
    # independent of any other model: 1/(K-1) bounds chance agreement, no fit needed.
    exact_null = True
    exact_null_reason = (
        "dawn's wrong answers are uniform over the classes other than the API model's "
        "answer, independent of any other model, so chance agreement is at most 1/(K-1)"
    )
    labels_independent = False

    def null_p(self, ctx: Context) -> float:
        return 1.0 / (ctx.num_classes - 1)

    def keygen(self, ctx: Context) -> DawnKey:
        model = ctx.clean_model()
        secret = bytes(ctx.rng("keygen").integers(0, 256, SECRET_BYTES, dtype=np.uint8))
        api = DawnAPI(model, secret, self.params.fraction)
        queries = torch.cat([ctx.splits.owner.images, ctx.splits.test.images])
        predict(api, queries, ctx.device)
        found = api.watermark_set()
        if found is None:
            raise ArenaError(
                f"defense {self.name!r}: fraction={self.params.fraction:g} answered none of "
                f"the {len(queries)} reference queries wrongly; raise fraction"
            )
        return DawnKey.create_with_secret(self.name, ctx.num_classes, *found, secret)

    def mark(self, model: nn.Module, key: DawnKey, ctx: Context) -> nn.Module:
        return model  # the model is not changed: the API carries the mark

    def serve(self, model: nn.Module, key: DawnKey, ctx: Context) -> DawnAPI:
        return DawnAPI(model, key.secret, self.params.fraction)

    def client_key(self, api: nn.Module, key: DawnKey, ctx: Context) -> DawnKey | None:
        found = api.watermark_set() if isinstance(api, DawnAPI) else None
        if found is None:
            return None
        return DawnKey.create_with_secret(self.name, ctx.num_classes, *found, key.secret)

    def continue_training(
        self, model: nn.Module, key: DawnKey, ctx: Context, description: str
    ) -> nn.Module:
        return model


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
