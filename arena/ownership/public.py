"""Public verification: cut-and-choose over the committed triggers, made non-interactive.

The seed paper (Section 5) makes ownership publicly verifiable in three steps:

1. the challenge ``e`` is the hash of the verification key (Fiat-Shamir), so nobody
   chooses it: a prover who wants other triggers challenged must change the key, which
   changes the challenge;
2. the challenged commitments are opened and checked to form a valid backdoor: their
   labels must be "wrong", i.e. not what a model of the domain answers anyway;
3. the unchallenged triggers decide the verdict, queried inside a zero-knowledge
   argument so that they stay secret.

What this module implements, and what it does not:

- Step 1, as written: ``challenge`` hashes the verification key's fingerprint with a
  domain tag and ranks every trigger by a hash of its position; the lower half of each
  subset is challenged.
- Step 2, with a statistical stand-in for "the label is wrong": nobody can compute the
  ground truth of an abstract image, so the opened labels are compared with the
  majority answer of clean reference models of the protocol (those of
  ``arena calibrate``). Under an honest key the labels are uniform and independent of
  the images, so that majority agrees with each label with probability exactly 1/|L|
  whatever the models are; a binomial test at the protocol's alpha rejects keys whose
  labels the reference models predict (in-distribution images with their true labels,
  one class's prototypes, ...).
- Step 3 is NOT implemented as a zero-knowledge argument: the unchallenged triggers of
  the opened subset are revealed to the verifier and the model is queried on them in
  the clear. Public verification therefore reveals one whole subset of a
  multiple-verification key and spends it, like private verification; the other
  subsets stay secret.
- Soundness against grinding: a prover can re-draw nonces until the hash puts the
  malformed triggers he planted in the verdict half. Each attempt succeeds with
  probability about 2^-m for m planted triggers, and m must exceed the verdict's
  threshold (about 14 of 50 at alpha 1e-3, null 0.1), so the work factor is about
  2^14: cheap. The paper's bound needs hundreds of committed triggers per subset; the
  check here is what the key sizes of the protocols allow.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.core.data import to_model_input
from arena.core.keys import TriggerKey, VerificationKey
from arena.core.protocols import Protocol
from arena.core.stats import Evidence
from arena.core.training import predict
from arena.util.errors import KeyTamperedError

CHALLENGE_DOMAIN = b"watermark-arena/cut-and-choose/v1"


PROOF_FORMAT = "arena-public-proof/1"


def challenge(vk: VerificationKey) -> np.ndarray:
    """Fiat-Shamir challenge: True for the triggers opened for the label check.

    Every subset has its lower half (by rank of a hash of the key and the position)
    challenged, so each public verification checks half of the subset it opens.
    """
    seed = hashlib.sha256(CHALLENGE_DOMAIN + bytes.fromhex(vk.fingerprint)).digest()
    challenged = np.zeros(len(vk.image_commitments), dtype=bool)
    for index in range(vk.subsets):
        positions = list(vk.subset_indices(index))
        ranked = sorted(
            positions, key=lambda i: hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        )
        challenged[ranked[: len(positions) // 2]] = True
    return challenged


@dataclass(frozen=True)
class LabelCheck:
    """Clean reference models against a key's opened labels.

    ``evidence`` counts the triggers whose label equals the reference models' majority
    answer, against chance 1/|L|; the key is well-formed unless that is significant.
    """

    evidence: Evidence
    references: int

    @property
    def passed(self) -> bool:
        return not self.evidence.verified

    def to_dict(self) -> dict[str, Any]:
        return {
            "evidence": self.evidence.to_dict(),
            "reference_models": self.references,
            "passed": self.passed,
        }

    def summary(self) -> str:
        e = self.evidence
        verdict = "well-formed" if self.passed else "REJECTED"
        return (
            f"{verdict}: the majority of {self.references} clean reference models answers "
            f"{e.successes} of {e.trials} opened labels (chance {e.null_p:.3g}, "
            f"p-value {e.p_value:.2e}, alpha {e.alpha:g})"
        )


def label_check(
    images: np.ndarray,
    labels: np.ndarray,
    references: list[nn.Module],
    protocol: Protocol,
    device: torch.device,
) -> LabelCheck:
    """Test whether clean models predict the opened labels more often than chance."""
    if not references:
        raise ValueError("the label check needs at least one reference model")
    inputs = to_model_input(images, protocol.image_size, protocol.channels)
    votes = torch.stack([predict(model, inputs, device) for model in references])
    majority = torch.mode(votes, dim=0).values  # ties go to the smallest label
    agree = int((majority == torch.as_tensor(labels)).sum())
    evidence = Evidence(agree, len(labels), 1.0 / protocol.num_classes, protocol.alpha)
    return LabelCheck(evidence, len(references))


def make_proof(key: TriggerKey, subset: int) -> dict[str, Any]:
    """The prover's message: the openings of every trigger of one subset."""
    positions = list(key.vk.subset_indices(subset))
    return {
        "format": PROOF_FORMAT,
        "key": key.fingerprint,
        "subset": subset,
        "openings": [
            {
                **_opening(key, i),
                **({"control": _opening(key.controls, i)} if key.controls else {}),
            }
            for i in positions
        ],
    }


def _opening(key: TriggerKey, i: int) -> dict[str, Any]:
    return {
        "position": i,
        "image": base64.b64encode(key.images[i].tobytes()).decode(),
        "label": int(key.labels[i]),
        "image_nonce": key.image_nonces[i].hex(),
        "label_nonce": key.label_nonces[i].hex(),
    }


def open_proof(proof: dict[str, Any], vk: VerificationKey, source: str = "proof") -> TriggerKey:
    """Check a proof against ``vk`` and return the opened subset as a key.

    Every opening must open its commitment, and the proof must open exactly one whole
    subset; anything else is refused as tampered.
    """
    try:
        if proof.get("format") != PROOF_FORMAT:
            raise ValueError(f"format is {proof.get('format')!r}")
        if proof["key"] != vk.fingerprint:
            raise KeyTamperedError(
                f"{source} is for key {str(proof['key'])[:16]}..., not this verification key "
                f"({vk.fingerprint[:16]}...)"
            )
        subset = int(proof["subset"])
        positions = list(vk.subset_indices(subset))
        openings = proof["openings"]
        if [int(o["position"]) for o in openings] != positions:
            raise ValueError(f"it does not open exactly the triggers of subset {subset}")
        selected = vk.select(positions)
        controls = None
        if vk.controls is not None:
            controls = _opened_key([o["control"] for o in openings], selected.controls)
        key = dataclasses.replace(_opened_key(openings, selected), controls=controls)
    except KeyTamperedError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise KeyTamperedError(f"{source} is malformed: {error}") from None
    key.open()
    return key


def _opened_key(openings: list[dict[str, Any]], vk: VerificationKey) -> TriggerKey:
    shape = vk.image_shape
    images = np.stack(
        [
            np.frombuffer(base64.b64decode(o["image"], validate=True), np.uint8).reshape(shape)
            for o in openings
        ]
    )
    labels = [o["label"] for o in openings]
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(f"label {label!r} is not an integer")
        if not 0 <= label < vk.num_classes:
            raise ValueError(f"label {label} is not a class (0-{vk.num_classes - 1})")
    return TriggerKey(
        scheme=vk.scheme,
        num_classes=vk.num_classes,
        images=images,
        labels=np.array(labels, dtype=np.int64),
        image_nonces=tuple(bytes.fromhex(o["image_nonce"]) for o in openings),
        label_nonces=tuple(bytes.fromhex(o["label_nonce"]) for o in openings),
        vk=vk,
    )


def split_opened(
    key: TriggerKey, vk: VerificationKey, subset: int
) -> tuple[TriggerKey, TriggerKey]:
    """The opened subset's challenged triggers (label check) and the rest (verdict)."""
    challenged = challenge(vk)[list(vk.subset_indices(subset))]
    return key.select(np.flatnonzero(challenged)), key.select(np.flatnonzero(~challenged))
