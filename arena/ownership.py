"""The ownership protocol as a vendor uses it: KeyGen, register, Mark, Verify.

These are the library functions behind ``arena keygen``, ``arena register``,
``arena mark`` and ``arena verify``. A marked model is written as safetensors with a
small JSON model card beside it (timm name, classes, channels, input size) so a verifier
can rebuild the architecture; verification also reads a plain state dict saved with
``torch.save``, loaded with ``weights_only=True`` (never unpickling arbitrary objects).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from arena.calibration import CalibrationStore, Null, measure, reference_models
from arena.clean import train_clean
from arena.context import Context, default_device
from arena.errors import ArenaError, ArtifactError
from arena.keys import TriggerKey, VerificationKey, read_json, write_json_atomic
from arena.ledger import Entry, Ledger, model_fingerprint
from arena.models import create_model
from arena.plugin import Defense, Key
from arena.progress import Reporter, silent
from arena.protocols import Protocol
from arena.public import LabelCheck, label_check, make_proof, open_proof, split_opened
from arena.registry import defenses
from arena.stats import Evidence
from arena.store import ArtifactCache, load_model_file

MODEL_CARD_FORMAT = "arena-model/1"


def keygen(
    defense_name: str,
    protocol: Protocol,
    out_dir: Path,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Key:
    """Sample a fresh key; ``mk.json`` (secret, 0600) and ``vk.json`` go to ``out_dir``.

    Without ``seed`` the trigger set is drawn from the operating system's randomness, as
    a real owner's key must be; a seed is for reproducible experiments only.
    """
    defense: Defense = defenses.get(defense_name)(params)
    if (out_dir / "mk.json").exists():
        raise ArenaError(f"{out_dir / 'mk.json'} exists; refusing to overwrite a marking key")
    ctx = Context(protocol=protocol, seed=secrets.randbits(62) if seed is None else seed)
    key = defense.keygen(ctx)
    key.save(out_dir)
    return key


def load_key(
    mk_path: Path, vk_path: Path, params: dict[str, Any] | None = None
) -> tuple[Defense, Key]:
    """The scheme named in ``vk`` (with ``params``), and the key with every commitment opened."""
    defense: Defense = defenses.get(scheme_of(vk_path))(params)
    return defense, defense.key_type.from_files(mk_path, vk_path)


def register_key(vk_path: Path, ledger: Ledger) -> Entry:
    """Record the verification key's commitment (its fingerprint) with a timestamp."""
    defense = defenses.get(scheme_of(vk_path))
    return ledger.append("key", defense.key_type.public_fingerprint(vk_path), label=str(vk_path))


def mark(
    mk_path: Path,
    vk_path: Path,
    protocol: Protocol,
    out_path: Path,
    ledger: Ledger,
    seed: int = 0,
    progress: Reporter = silent,
    params: dict[str, Any] | None = None,
    start_from: Path | None = None,
) -> Path:
    """Train a marked model of ``protocol`` with the key; write it and its model card.

    ``params`` are the scheme's marking parameters (epochs, triggers per batch, ...).
    ``start_from`` is the owner's own trained model file (safetensors or a state dict):
    the scheme's Mark continues training it instead of a fresh model.
    """
    defense, key = load_key(mk_path, vk_path, params)
    if getattr(key, "num_classes", protocol.num_classes) != protocol.num_classes:
        raise ArenaError(
            f"the key has {key.num_classes} classes, protocol {protocol.name!r} has "
            f"{protocol.num_classes}"
        )
    ctx = Context(protocol=protocol, seed=seed, progress=progress)
    if start_from is not None:
        model = load_model(start_from, protocol).to(ctx.device)
    else:
        model = ctx.owner_model()
        if defense.starts_from == "clean":
            train_clean(model, ctx)
    model = defense.mark(model, key, ctx)
    save_model(model, out_path, protocol)
    ledger.append("model", model_fingerprint(model), label=str(out_path))
    return out_path


def save_model(model: nn.Module, path: Path, protocol: Protocol) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(state, str(temporary))
    temporary.replace(path)
    write_json_atomic(
        card_path(path),
        {
            "format": MODEL_CARD_FORMAT,
            "model": protocol.model,
            "num_classes": protocol.num_classes,
            "channels": protocol.channels,
            "image_size": protocol.image_size,
            "protocol": protocol.name,
        },
    )


def card_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def load_model(path: Path, protocol: Protocol, architecture: str | None = None) -> nn.Module:
    """Rebuild the architecture (model card, else ``architecture`` on ``protocol``) and
    load the weights from safetensors or a plain state dict."""
    if not path.exists():
        raise ArenaError(f"model file {path} does not exist")
    card = read_json(card_path(path)) if card_path(path).exists() else {}
    name = architecture or card.get("model") or protocol.model
    model = create_model(
        name,
        num_classes=int(card.get("num_classes", protocol.num_classes)),
        channels=int(card.get("channels", protocol.channels)),
        image_size=int(card.get("image_size", protocol.image_size)),
    )
    if path.suffix == ".safetensors":
        load_model_file(path, model)
        return model
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusing an object, a truncated file, ...
        raise ArtifactError(f"{path} is not a readable state dict: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path} does not hold a state dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(f"{path} does not fit {name}: {str(error).splitlines()[0]}") from None
    return model


@dataclass(frozen=True)
class Claim:
    """The outcome of ``arena verify``: the evidence and the ledger facts behind it."""

    scheme: str
    evidence: Evidence
    null: Null
    triggers_opened: str
    model_fingerprint: str
    key_registered_at: float | None
    model_first_seen_at: float
    label_check: LabelCheck | None = None  # public verification only

    @property
    def registered_before_seen(self) -> bool:
        return (
            self.key_registered_at is not None and self.key_registered_at < self.model_first_seen_at
        )

    @property
    def verified(self) -> bool:
        well_formed = self.label_check is None or self.label_check.passed
        return well_formed and self.evidence.verified

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "evidence": self.evidence.to_dict(),
            "null_p_source": self.null.source,
            "calibration": self.null.calibration,
            "label_check": self.label_check.to_dict() if self.label_check else None,
            "triggers_opened": self.triggers_opened,
            "model_fingerprint": self.model_fingerprint,
            "key_registered_at": _iso(self.key_registered_at),
            "model_first_seen_at": _iso(self.model_first_seen_at),
            "key_registered_before_model_seen": self.registered_before_seen,
            "verified": self.verified,
        }


def verify(
    model_path: Path,
    mk_path: Path,
    vk_path: Path,
    protocol: Protocol,
    ledger: Ledger,
    architecture: str | None = None,
    subset: int | None = None,
    calibrations: CalibrationStore | None = None,
) -> Claim:
    """Open the key, query the model on it, test the agreement; consult the ledger.

    A key with several trigger subsets reveals one per verification: ``subset``, or the
    first one not yet revealed. The ledger records it as spent, and revealing it again
    is refused, so the subsets not yet revealed stay secret for later verifications.
    """
    defense, key = load_key(mk_path, vk_path)
    null = sound_null(calibrations or CalibrationStore(), protocol, defense.name)
    subsets = getattr(getattr(key, "vk", None), "subsets", 1)
    opened, revealed = key, "all {n} (a single-subset key)"
    if subsets > 1:
        index = _unspent_subset(ledger, key.fingerprint, subsets, subset)
        opened = key.subset(index)
        revealed = f"subset {index} of {subsets} ({{n}} triggers)"
    claim = _claim(
        defense, key.fingerprint, opened, model_path, protocol, ledger, null, architecture
    )
    if subsets > 1:
        ledger.append("spent", f"{key.fingerprint}:{index}", label=str(model_path))
    return dataclasses.replace(claim, triggers_opened=revealed.format(n=claim.evidence.trials))


def prove(mk_path: Path, vk_path: Path, ledger: Ledger, subset: int | None = None) -> dict:
    """The owner's public proof: the openings of one unrevealed subset, recorded as spent.

    Anyone holding ``vk`` checks it with ``verify_public``; the other subsets stay secret.
    """
    _, key = load_key(mk_path, vk_path)
    if not isinstance(key, TriggerKey):
        raise ArenaError(f"public verification needs a trigger-set key, not {key.scheme!r}")
    index = _unspent_subset(ledger, key.fingerprint, key.vk.subsets, subset)
    proof = make_proof(key, index)
    ledger.append("spent", f"{key.fingerprint}:{index}", label="public proof")
    return proof


def verify_public(
    model_path: Path,
    vk_path: Path,
    proof: dict[str, Any],
    protocol: Protocol,
    ledger: Ledger,
    calibrations: CalibrationStore | None = None,
    cache: ArtifactCache | None = None,
    architecture: str | None = None,
) -> Claim:
    """Check a public proof against ``vk`` alone: cut-and-choose with a Fiat-Shamir challenge.

    The proof must open one whole subset. Its challenged half goes to the label check
    against the protocol's clean reference models (those of its calibration); the other
    half decides the verdict on the model. See ``arena.public`` for what is and is not
    implemented of the seed paper's zero-knowledge construction.
    """
    defense: Defense = defenses.get(scheme_of(vk_path))()
    if not issubclass(defense.key_type, TriggerKey):
        raise ArenaError(
            f"public verification opens trigger sets; {defense.name} is a "
            f"{defense.access} scheme without one"
        )
    calibrations = calibrations or CalibrationStore()
    null = sound_null(calibrations, protocol, defense.name)
    vk = VerificationKey.from_dict(read_json(vk_path), source=str(vk_path))
    opened = open_proof(proof, vk)
    subset = int(proof["subset"])
    checked, deciding = split_opened(opened, vk, subset)
    references = reference_models(protocol, defense.name, calibrations, cache)
    device = default_device()
    check = label_check(checked.images, checked.labels, references, protocol, device)
    claim = _claim(
        defense, vk.fingerprint, deciding, model_path, protocol, ledger, null, architecture
    )
    return dataclasses.replace(
        claim,
        label_check=check,
        triggers_opened=(
            f"subset {subset} of {vk.subsets}: {len(checked)} challenged for the label check, "
            f"{len(deciding)} decide the verdict"
        ),
    )


def _claim(
    defense: Defense,
    key_fingerprint: str,
    opened: Key,
    model_path: Path,
    protocol: Protocol,
    ledger: Ledger,
    null: Null,
    architecture: str | None,
) -> Claim:
    """Query the model on the opened triggers, test against ``null``, and read the
    ledger: the part private and public verification share."""
    model = load_model(model_path, protocol, architecture).to(default_device())
    fingerprint = model_fingerprint(model)
    seen = ledger.append("model", fingerprint, label=str(model_path))  # first sight if new
    registered = ledger.first_seen("key", key_fingerprint)
    evidence = measure(defense, model, opened, Context(protocol=protocol), null)
    return Claim(
        scheme=defense.name,
        evidence=evidence,
        null=null,
        triggers_opened="",
        model_fingerprint=fingerprint,
        key_registered_at=registered.recorded_at if registered else None,
        model_first_seen_at=seen.recorded_at,
    )


def sound_null(calibrations: CalibrationStore, protocol: Protocol, scheme: str) -> Null:
    """The scheme's null on ``protocol``; a verdict that may end up in a dispute is never
    decided against an unsound one (a scheme whose labels are not uniform, uncalibrated,
    or whose fitted null its own calibration caught claiming clean models)."""
    null = calibrations.null(protocol, scheme)
    if not null.sound:
        raise ArenaError(f"cannot verify: {null.source}")
    return null


def _unspent_subset(ledger: Ledger, key_fingerprint: str, subsets: int, wanted: int | None) -> int:
    spent = {
        int(entry.digest.rsplit(":", 1)[1])
        for entry in ledger.entries()
        if entry.kind == "spent" and entry.digest.startswith(f"{key_fingerprint}:")
    }
    if wanted is not None:
        if not 0 <= wanted < subsets:
            raise ArenaError(
                f"subset {wanted} does not exist; the key has {subsets} (0-{subsets - 1})"
            )
        if wanted in spent:
            raise ArenaError(
                f"subset {wanted} of this key was already revealed; reusing it is refused"
            )
        return wanted
    for index in range(subsets):
        if index not in spent:
            return index
    raise ArenaError(f"all {subsets} trigger subsets of this key were revealed; none is left")


def scheme_of(vk_path: Path) -> str:
    scheme = read_json(vk_path).get("scheme")
    if not isinstance(scheme, str):
        raise ArenaError(f"{vk_path} names no scheme")
    return scheme


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
