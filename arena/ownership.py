"""The ownership protocol as a vendor uses it: KeyGen, register, Mark, Verify.

These are the library functions behind ``arena keygen``, ``arena register``,
``arena mark`` and ``arena verify``. A marked model is written as safetensors with a
small JSON model card beside it (timm name, classes, channels, input size) so a verifier
can rebuild the architecture; verification also reads a plain state dict saved with
``torch.save``, loaded with ``weights_only=True`` (never unpickling arbitrary objects).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from arena.calibration import CalibrationStore, Null, measure, reference_models
from arena.clean import train_clean
from arena.context import Context, check_seed, default_device
from arena.errors import ArenaError, ArtifactError
from arena.keys import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
    TriggerKey,
    VerificationKey,
    read_json,
    stage_json,
    write_json_atomic,
)
from arena.ledger import Entry, Ledger, Receipt, model_fingerprint
from arena.models import create_model
from arena.plugin import Defense, Key
from arena.progress import Reporter, silent
from arena.protocols import Protocol
from arena.public import LabelCheck, label_check, make_proof, open_proof, split_opened
from arena.registry import defenses
from arena.stats import Evidence
from arena.store import ArtifactCache, check_writable, file_lock, load_model_file, make_folder

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
    _check_key_folder(out_dir)
    make_folder(out_dir, "the key")  # before the key is drawn: a KeyGen may train first
    ctx = Context(protocol=protocol, seed=secrets.randbits(62) if seed is None else seed)
    key = defense.keygen(ctx)
    _publish_key(key, out_dir)
    return key


KEY_FILES = ("mk.json", "vk.json")


def _check_key_folder(out_dir: Path) -> None:
    """A folder a new key can go to: no key file in it (a published vk.json whose mk is
    kept elsewhere is a key too), and a folder if it exists."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ArenaError(f"{out_dir} is a file; --out names the folder for mk.json and vk.json")
    for name in KEY_FILES:
        if (out_dir / name).exists() or (out_dir / name).is_symlink():
            raise ArenaError(
                f"{out_dir / name} exists; refusing to overwrite a key (choose another --out)"
            )


def _publish_key(key: Key, out_dir: Path) -> None:
    """Write the key beside ``out_dir`` first, then link each file into place: a link
    never replaces a file, so of two keygens into one folder exactly one succeeds, and
    no key file that exists is ever overwritten."""
    try:
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".keygen-"))
    except OSError as error:
        raise ArenaError(f"cannot write the key into {out_dir}: {error.strerror}") from None
    linked: list[Path] = []
    try:
        key.save(staging)
        for name in KEY_FILES:
            place_new(staging / name, out_dir / name)
            linked.append(out_dir / name)
    except FileExistsError:
        for path in linked:  # ours: the same inode as the staged file
            path.unlink()
        raise ArenaError(
            f"another key was written into {out_dir} at the same time; this one was not "
            "written (choose another --out)"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    # Everything that would fail after the training is checked before it.
    check_seed(seed)
    if out_path.suffix != ".safetensors":
        raise ArenaError(f"--out must name a .safetensors file, got {out_path}")
    make_folder(out_path.parent, "the marked model")
    for path in (out_path, card_path(out_path)):
        check_new_file(path)
    check_writable(ledger.path, "ledger")
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
    """Write the weights and their model card; an existing file is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    save_file(state, temporary)
    _publish(Path(temporary), path, "marked model")
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


def read_card(model_path: Path) -> dict[str, Any]:
    """The model card beside ``model_path`` ({} if there is none), every field checked."""
    path = card_path(model_path)
    if not path.exists():
        return {}
    card = read_json(path)
    from arena.data import FOLDER_PREFIX
    from arena.protocols import PROTOCOLS

    fields: dict[str, tuple[type, Callable[[Any], bool], str]] = {
        "format": (str, lambda v: v == MODEL_CARD_FORMAT, repr(MODEL_CARD_FORMAT)),
        "model": (str, lambda v: 0 < len(v) <= 200, "a timm model name"),
        "protocol": (
            str,
            lambda v: v in PROTOCOLS or (v.startswith(FOLDER_PREFIX) and len(v) <= 300),
            f"a protocol ({', '.join(PROTOCOLS)}, or {FOLDER_PREFIX}<name>)",
        ),
        "num_classes": (int, lambda v: 2 <= v <= MAX_CLASSES, f"2-{MAX_CLASSES:,}"),
        "channels": (int, lambda v: 1 <= v <= MAX_CHANNELS, f"1-{MAX_CHANNELS}"),
        "image_size": (int, lambda v: 1 <= v <= MAX_IMAGE_SIDE, f"1-{MAX_IMAGE_SIDE}"),
    }
    for name, (kind, fits, allowed) in fields.items():
        if name not in card:  # a card is whole or it is not ours: nothing falls back
            raise ArtifactError(f"model card {path} has no {name!r}")
        value = card[name]
        if isinstance(value, bool) or not isinstance(value, kind) or not fits(value):
            raise ArtifactError(f"model card {path}: {name} must be {allowed}, got {value!r}")
    return card


def suspect_protocol(model_path: Path, requested: str | None) -> Protocol:
    """The protocol to verify ``model_path`` under: the one its model card names, which
    ``requested`` (a --protocol given by the user) must agree with; else ``requested``,
    else the default."""
    from arena.protocols import PROTOCOLS, get_protocol

    card = read_card(model_path) if model_path.is_file() else {}
    named = card.get("protocol")
    if named in PROTOCOLS:
        if requested is not None and requested != named:
            raise ArenaError(
                f"the model card of {model_path} says it was made under protocol {named!r}, "
                f"not {requested!r}; drop --protocol or pass --protocol {named}"
            )
        return get_protocol(named)
    base = get_protocol(requested or "mnist5k")
    if named is None:
        return base
    # A model marked on an image folder: the requested protocol's budgets and alpha, the
    # card's input and classes (and its own name, so no calibration of another applies).
    return dataclasses.replace(
        base,
        name=named,
        num_classes=card.get("num_classes", base.num_classes),
        channels=card.get("channels", base.channels),
        image_size=card.get("image_size", base.image_size),
    )


def load_model(path: Path, protocol: Protocol, architecture: str | None = None) -> nn.Module:
    """Rebuild the architecture (model card, else ``architecture`` on ``protocol``) and
    load the weights from safetensors or a plain state dict.

    The card must fit the protocol (its input size, channels and classes: a model is
    never silently resized), and the file must hold exactly the tensors of that
    architecture, which is checked on a skeleton without memory before the model is
    built, so no card can make the verifier allocate what the file does not hold.
    """
    if not path.exists():
        raise ArenaError(f"model file {path} does not exist")
    if not path.is_file():
        raise ArenaError(f"model file {path} is not a regular file")
    card = read_card(path)
    name = architecture or card.get("model") or protocol.model
    shape = {
        "num_classes": card.get("num_classes", protocol.num_classes),
        "channels": card.get("channels", protocol.channels),
        "image_size": card.get("image_size", protocol.image_size),
    }
    expected = {
        "num_classes": protocol.num_classes,
        "channels": protocol.channels,
        "image_size": protocol.image_size,
    }
    for field, value in shape.items():
        if value != expected[field]:
            raise ArenaError(
                f"the model card of {path} gives {field} {value}, protocol "
                f"{protocol.name!r} has {expected[field]}; verify it under its own protocol"
            )
    with torch.device("meta"):  # shapes only: nothing is allocated
        skeleton = create_model(name, **shape)
    wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if path.suffix == ".safetensors":
        _check_shapes(path, name, _safetensors_shapes(path), wanted)
        model = create_model(name, **shape)
        load_model_file(path, model)
        return model
    state = _read_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path} does not hold a state dict of tensors")
    _check_shapes(path, name, {k: tuple(v.shape) for k, v in state.items()}, wanted)
    model = create_model(name, **shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ArtifactError(f"{path} does not fit {name}: {str(error).splitlines()[0]}") from None
    return model


def _read_state(path: Path) -> Any:
    """``torch.load`` without unpickling objects: memory-mapped, or read whole for a file
    in the legacy (non-zip) format, which cannot be mapped."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's refusal, whose advice is to turn the check off
        raise ArtifactError(
            f"{path} is not a readable state dict: it needs pickle to load, which arena "
            "never does (save a state dict of tensors, or a .safetensors file)"
        ) from None
    except Exception as error:  # a truncated file, ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ArtifactError(f"{path} is not a readable state dict: {detail}") from None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares in its header; nothing is loaded."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # a header that is no safetensors header
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ArtifactError(f"{path} is not a readable safetensors file: {detail}") from None


def _check_shapes(
    path: Path,
    name: str,
    found: dict[str, tuple[int, ...]],
    wanted: dict[str, tuple[int, ...]],
) -> None:
    """Refuse a file whose tensors are not exactly those of architecture ``name``."""
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(found) if wanted[k] != found[k])
    if missing or extra or wrong:
        first = (
            f"tensor {wrong[0]} is {list(found[wrong[0]])}, {name} needs {list(wanted[wrong[0]])}"
            if wrong
            else f"{len(missing)} tensors missing (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} unexpected tensors (e.g. {extra[0]})"
        )
        raise ArtifactError(f"{path} does not fit {name}: {first}")


# A key whose labels a uniform draw gives with less than this probability (chi-square
# goodness of fit) was not drawn uniformly; an honest key is refused once in a million.
LABEL_BALANCE_ALPHA = 1e-6


def _check_labels_uniform(defense: Defense, key: Key) -> None:
    """The exact null 1/|L| holds for labels drawn uniformly: refuse a key whose labels
    were plainly not (all one class, say, which a model answering that class would
    "verify")."""
    if not (defense.exact_null and isinstance(key, TriggerKey)):
        return
    from scipy.stats import chisquare

    counts = np.bincount(key.labels, minlength=key.num_classes)
    p = float(chisquare(counts).pvalue)
    if p < LABEL_BALANCE_ALPHA:
        raise ArenaError(
            f"the key's labels are not a uniform draw over its {key.num_classes} classes "
            f"(chi-square p = {p:.1e}; most common class {counts.argmax()} on "
            f"{counts.max()} of {len(key)} triggers): the null 1/|L| does not hold for it"
        )


def _check_key_fits(key_classes: int | None, model: nn.Module, model_path: Path) -> None:
    """A key decides only on a model of its own classes: its labels are uniform over
    them, so 1/|L| of the key is the null only there."""
    model_classes = getattr(model, "num_classes", None)
    if key_classes is not None and model_classes is not None and key_classes != model_classes:
        raise ArenaError(
            f"the key is for {key_classes} classes and {model_path} answers "
            f"{model_classes}; a key verifies only models of its own classes"
        )


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
    key_position: int | None  # ledger positions: the key's registration, the model's first sight
    model_position: int
    label_check: LabelCheck | None = None  # public verification only
    receipted_through: int | None = None  # the last ledger entry checked receipts fix

    @property
    def registered_before_seen(self) -> bool:
        return self.key_position is not None and self.key_position < self.model_position

    @property
    def order_receipted(self) -> bool:
        """Whether a checked receipt fixes ``registered_before_seen``: it does when the
        earlier of the two entries lies in the receipted prefix, which no rewrite of the
        ledger can move an entry into or out of."""
        if self.receipted_through is None:
            return False
        positions = [self.model_position]
        if self.key_position is not None:
            positions.append(self.key_position)
        return min(positions) <= self.receipted_through

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
            "key_ledger_position": self.key_position,
            "model_ledger_position": self.model_position,
            "ledger_receipted_through": self.receipted_through,
            "ledger_order_receipted": self.order_receipted,
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
    receipts: Sequence[Receipt] = (),
) -> Claim:
    """Open the key, query the model on it, test the agreement; consult the ledger.

    A key with several trigger subsets reveals one per verification: ``subset``, or the
    first one not yet revealed. The ledger records it as spent, and revealing it again
    is refused, so the subsets not yet revealed stay secret for later verifications.
    ``receipts`` are checked against the ledger before anything is appended to it.
    """
    receipted = ledger.check_receipts(receipts)
    defense, key = load_key(mk_path, vk_path)
    _check_labels_uniform(defense, key)
    null = sound_null(calibrations or CalibrationStore(), protocol, defense.name)
    # Everything that can fail is checked before a subset is chosen: the model, its
    # classes against the key's, and that the ledger will take the spent subset.
    model = load_model(model_path, protocol, architecture)
    _check_key_fits(getattr(key, "num_classes", None), model, model_path)
    check_writable(ledger.path, "ledger")
    subsets = getattr(getattr(key, "vk", None), "subsets", 1)
    if subset is not None and not 0 <= subset < subsets:
        raise ArenaError(f"subset {subset} does not exist; the key has {subsets} (0-{subsets - 1})")
    opened, revealed = key, "all {n} (a single-subset key)"
    with subset_lock(ledger):  # two verifications at once never reveal the same subset
        if subsets > 1:
            index = _unspent_subset(ledger, key.fingerprint, subsets, subset)
            opened = key.subset(index)
            revealed = f"subset {index} of {subsets} ({{n}} triggers)"
        claim = _claim(defense, key.fingerprint, opened, model, model_path, protocol, ledger, null)
        if subsets > 1:
            ledger.append("spent", f"{key.fingerprint}:{index}", label=str(model_path))
    return dataclasses.replace(
        claim,
        triggers_opened=revealed.format(n=claim.evidence.trials),
        receipted_through=receipted,
    )


def prove(
    mk_path: Path,
    vk_path: Path,
    ledger: Ledger,
    subset: int | None = None,
    out: Path | None = None,
) -> dict:
    """The owner's public proof: the openings of one unrevealed subset, recorded as spent.

    Anyone holding ``vk`` checks it with ``verify_public``; the other subsets stay secret.
    With ``out``, the proof is written there (never over an existing file) before the
    subset is recorded as spent, and published under its name only after: a proof that
    cannot be written spends nothing.
    """
    _, key = load_key(mk_path, vk_path)
    if not isinstance(key, TriggerKey):
        raise ArenaError(f"public verification needs a trigger-set key, not {key.scheme!r}")
    if out is not None:
        check_new_file(out)
    check_writable(ledger.path, "ledger")
    with subset_lock(ledger):
        index = _unspent_subset(ledger, key.fingerprint, key.vk.subsets, subset)
        proof = make_proof(key, index)
        if out is None:
            ledger.append("spent", f"{key.fingerprint}:{index}", label="public proof")
            return proof
        staged = stage_json(out, proof)
        try:
            ledger.append("spent", f"{key.fingerprint}:{index}", label=f"public proof {out}")
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    _publish(staged, out, "proof")
    return proof


def verify_public(
    model_path: Path,
    vk_path: Path,
    proof: dict[str, Any] | None,
    protocol: Protocol,
    ledger: Ledger,
    calibrations: CalibrationStore | None = None,
    cache: ArtifactCache | None = None,
    architecture: str | None = None,
    receipts: Sequence[Receipt] = (),
    mk_path: Path | None = None,
    subset: int | None = None,
) -> Claim:
    """Check a public proof against ``vk`` alone: cut-and-choose with a Fiat-Shamir challenge.

    Without ``proof``, the owner's ``mk_path`` makes one in memory, and its subset is
    recorded as spent only with the verdict, as ``verify`` does: a failed attempt
    spends nothing.

    The proof must open one whole subset. Its challenged half goes to the label check
    against the protocol's clean reference models (those of its calibration); the other
    half decides the verdict on the model. See ``arena.public`` for what is and is not
    implemented of the seed paper's zero-knowledge construction.
    """
    receipted = ledger.check_receipts(receipts)
    check_writable(ledger.path, "ledger")  # the model's first sight is recorded at the end
    defense: Defense = defenses.get(scheme_of(vk_path))()
    if not issubclass(defense.key_type, TriggerKey):
        raise ArenaError(
            f"public verification opens trigger sets; {defense.name} is a "
            f"{defense.access} scheme without one"
        )
    calibrations = calibrations or CalibrationStore()
    null = sound_null(calibrations, protocol, defense.name)
    vk = VerificationKey.from_dict(read_json(vk_path), source=str(vk_path))
    references = reference_models(protocol, defense.name, calibrations, cache)
    model = load_model(model_path, protocol, architecture)
    _check_key_fits(vk.num_classes, model, model_path)

    def decide(proof: dict[str, Any]) -> Claim:
        opened = open_proof(proof, vk)
        _check_labels_uniform(defense, opened)
        subset = int(proof["subset"])
        checked, deciding = split_opened(opened, vk, subset)
        device = default_device()
        check = label_check(checked.images, checked.labels, references, protocol, device)
        claim = _claim(defense, vk.fingerprint, deciding, model, model_path, protocol, ledger, null)
        return _public_claim(claim, check, receipted, vk, subset, len(checked), len(deciding))

    if proof is not None:
        return decide(proof)
    if mk_path is None:
        raise ArenaError("public verification needs the owner's proof or the marking key")
    _, key = load_key(mk_path, vk_path)
    with subset_lock(ledger):
        index = _unspent_subset(ledger, key.fingerprint, key.vk.subsets, subset)
        claim = decide(make_proof(key, index))
        ledger.append("spent", f"{key.fingerprint}:{index}", label=f"public {model_path}")
    return claim


def _public_claim(
    claim: Claim,
    check: LabelCheck,
    receipted: int | None,
    vk: VerificationKey,
    subset: int,
    checked: int,
    deciding: int,
) -> Claim:
    return dataclasses.replace(
        claim,
        label_check=check,
        receipted_through=receipted,
        triggers_opened=(
            f"subset {subset} of {vk.subsets}: {checked} challenged for the label check, "
            f"{deciding} decide the verdict"
        ),
    )


def _claim(
    defense: Defense,
    key_fingerprint: str,
    opened: Key,
    model: nn.Module,
    model_path: Path,
    protocol: Protocol,
    ledger: Ledger,
    null: Null,
) -> Claim:
    """Query the model on the opened triggers, test against ``null``, and read the
    ledger: the part private and public verification share."""
    model = model.to(default_device())
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
        key_position=registered.position if registered else None,
        model_position=seen.position,
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


@contextmanager
def subset_lock(ledger: Ledger) -> Iterator[None]:
    """Hold the ledger's subset lock: choosing an unspent subset and recording it spent
    happen under it, so two verifications or proofs at once never reveal one subset."""
    lock = ledger.path.with_name(ledger.path.name + ".lock")
    try:
        lock.touch(exist_ok=True)
    except OSError as error:
        raise ArenaError(f"cannot lock the ledger {ledger.path}: {error.strerror}") from None
    with file_lock(lock):
        yield


def check_new_file(path: Path) -> None:
    """``path`` can take a new file: its folder exists and nothing is there yet."""
    if path.exists() or path.is_symlink():
        raise ArenaError(f"{path} exists; refusing to overwrite it (choose another path)")
    if not path.parent.is_dir():
        raise ArenaError(f"the folder of {path} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise ArenaError(f"the folder of {path} is not writable")


def _publish(staged: Path, path: Path, what: str) -> None:
    """Give the staged file its name (mode 0644: public), never over an existing file."""
    staged.chmod(0o644)
    try:
        place_new(staged, path)
    except FileExistsError:
        raise ArenaError(
            f"{path} appeared while the {what} was written; the {what} is kept in {staged}"
        ) from None
    except OSError as error:
        raise ArenaError(
            f"cannot write {path} ({error.strerror}); the {what} is kept in {staged}"
        ) from None


def place_new(staged: Path, path: Path) -> None:
    """Move the finished file ``staged`` to ``path``, which must not exist (else
    ``FileExistsError``): a hard link, which never replaces a file; where the file system
    has none, the name is claimed with an exclusive create and the file renamed onto it."""
    try:
        os.link(staged, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network and FUSE file systems)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(staged, path)
        return
    staged.unlink()
