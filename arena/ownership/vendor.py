"""The ownership protocol as a vendor uses it: KeyGen, register, Mark, Verify.

These are the library functions behind ``arena keygen``, ``arena register``,
``arena mark`` and ``arena verify``. A marked model is written as safetensors with a
small JSON model card beside it (timm name, classes, channels, input size) so a verifier
can rebuild the architecture; verification also reads a plain state dict saved with
``torch.save``, loaded with ``weights_only=True`` (never unpickling arbitrary objects).
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from arena.core.context import Context, check_seed, default_device
from arena.core.keys import (
    Key,
    VerificationKey,
)
from arena.core.plugin import Defense
from arena.core.protocols import Protocol
from arena.core.registry import defenses
from arena.core.stats import Evidence
from arena.core.verify import Null, measure
from arena.ownership.ledger import Entry, Ledger, Receipt, model_fingerprint
from arena.ownership.modelfile import card_path, load_model, save_model
from arena.ownership.public import LabelCheck, label_check, make_proof, open_proof, split_opened
from arena.ownership.remote import PartialAnswers, RemoteModel, ServiceReport
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationStore
from arena.storage.clean import reference_models, train_clean, trained_clean
from arena.storage.results import check_writable
from arena.util.errors import ArenaError
from arena.util.files import _publish, check_new_file, file_lock, place_new
from arena.util.jsonio import read_json, stage_json
from arena.util.paths import make_folder
from arena.util.progress import Reporter, silent


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
    # Model-dependent keys (frontier stitching) are drawn from the owner's clean model,
    # trained here only if the scheme asks for it.
    ctx = dataclasses.replace(ctx, clean=functools.cache(lambda: trained_clean(ctx)))
    defaults = type(defense)().params_dict()
    chosen = {k: v for k, v in defense.params_dict().items() if v != defaults[k]}
    # Recorded in the verification key, so that marking and verifying use the scheme as
    # it was configured (and the null calibrated for that configuration).
    key = defense.keygen(ctx).with_params(chosen)
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
    """The scheme named in ``vk``, configured as the key records (``arena keygen -D``)
    and with ``params`` besides (marking parameters), and the key with every commitment
    opened. A parameter given against the key's recorded value is refused."""
    scheme = defenses.get(scheme_of(vk_path))
    key = scheme.key_type.from_files(mk_path, vk_path)
    return scheme_for_key(scheme, key.recorded_params(), params), key


def scheme_for_key(
    scheme: type[Defense], recorded: dict[str, Any], params: dict[str, Any] | None = None
) -> Defense:
    """``scheme`` with the parameters a key recorded and ``params`` that do not contradict
    them."""
    given = scheme(params).params_dict() if params else {}
    for name, value in recorded.items():
        if name in (params or {}) and given[name] != scheme({name: value}).params_dict()[name]:
            raise ArenaError(
                f"the key was drawn with {scheme.name} {name}={value}; -D {name}="
                f"{params[name]} contradicts it (leave it out: the key's value is used)"
            )
    return scheme({**recorded, **(params or {})})


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
    if key.class_count() not in (None, protocol.num_classes):
        raise ArenaError(
            f"the key has {key.class_count()} classes, protocol {protocol.name!r} has "
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


# A key whose labels a uniform draw gives with less than this probability (chi-square
# goodness of fit) was not drawn uniformly; an honest key is refused once in a million.
LABEL_BALANCE_ALPHA = 1e-6


def _check_labels_uniform(defense: Defense, key: Key) -> None:
    """The exact null 1/|L| holds for labels drawn uniformly: refuse a key whose labels
    were plainly not (all one class, say, which a model answering that class would
    "verify")."""
    labels, classes = key.committed_labels(), key.class_count()
    if not defense.exact_null or labels is None or classes is None:
        return
    from scipy.stats import chisquare

    counts = np.bincount(labels, minlength=classes)
    p = float(chisquare(counts).pvalue)
    if p < LABEL_BALANCE_ALPHA:
        raise ArenaError(
            f"the key's labels are not a uniform draw over its {classes} classes "
            f"(chi-square p = {p:.1e}; most common class {counts.argmax()} on "
            f"{counts.max()} of {len(labels)} triggers): the null 1/|L| does not hold for it"
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
    service: ServiceReport | None = None  # a suspect behind a prediction API only

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
        evidence = self.service is None or self.service.answers_are_evidence
        return well_formed and evidence and self.evidence.verified

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
            "service": self.service.to_dict() if self.service else None,
            "verified": self.verified,
        }


def verify(
    model_path: Path | str,
    mk_path: Path,
    vk_path: Path,
    protocol: Protocol,
    ledger: Ledger,
    architecture: str | None = None,
    subset: int | None = None,
    calibrations: CalibrationStore | None = None,
    receipts: Sequence[Receipt] = (),
    suspect: nn.Module | None = None,
) -> Claim:
    """Open the key, query the model on it, test the agreement; consult the ledger.

    ``suspect`` is the model already loaded (a ``RemoteModel`` for a prediction API),
    with ``model_path`` naming it; otherwise the model is read from ``model_path``.

    A key with several trigger subsets reveals one per verification: ``subset``, or the
    first one not yet revealed. The ledger records it as spent, and revealing it again
    is refused, so the subsets not yet revealed stay secret for later verifications.
    ``receipts`` are checked against the ledger before anything is appended to it.
    """
    receipted = ledger.check_receipts(receipts)
    defense, key = load_key(mk_path, vk_path)
    _check_labels_uniform(defense, key)
    null = sound_null(calibrations or CalibrationStore(), protocol, defense)
    # Everything that can fail is checked before a subset is chosen: the model, its
    # classes against the key's, and that the ledger will take the spent subset.
    model = suspect if suspect is not None else load_model(model_path, protocol, architecture)
    _check_key_fits(key.class_count(), model, model_path)
    check_writable(ledger.path, "ledger")
    subsets = key.subset_count()
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
    return _finished(
        model,
        dataclasses.replace(
            claim,
            triggers_opened=revealed.format(n=claim.evidence.trials),
            receipted_through=receipted,
        ),
    )


def _finished(model: nn.Module, claim: Claim) -> Claim:
    """The claim with what a prediction API was asked and answered; its journal of
    answers is removed now that the verdict (and any spent subset) is recorded."""
    if not isinstance(model, RemoteModel):
        return claim
    model.forget()
    return dataclasses.replace(claim, service=model.service_report)


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
    if not key.public_verification:
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
    model_path: Path | str,
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
    suspect: nn.Module | None = None,
) -> Claim:
    """Check a public proof against ``vk`` alone: cut-and-choose with a Fiat-Shamir challenge.

    Without ``proof``, the owner's ``mk_path`` makes one in memory, and its subset is
    recorded as spent only with the verdict, as ``verify`` does: a failed attempt
    spends nothing.

    The proof must open one whole subset. Its challenged half goes to the label check
    against the protocol's clean reference models (those of its calibration); the other
    half decides the verdict on the model. See ``arena.ownership.public`` for what is and is not
    implemented of the seed paper's zero-knowledge construction.
    """
    receipted = ledger.check_receipts(receipts)
    check_writable(ledger.path, "ledger")  # the model's first sight is recorded at the end
    scheme = defenses.get(scheme_of(vk_path))
    if not scheme.key_type.public_verification:
        raise ArenaError(
            f"public verification opens trigger sets; {scheme.name} is a "
            f"{scheme.access} scheme without one"
        )
    vk = VerificationKey.from_dict(read_json(vk_path), source=str(vk_path))
    defense = scheme_for_key(scheme, dict(vk.params or {}))
    calibrations = calibrations or CalibrationStore()
    null = sound_null(calibrations, protocol, defense)
    references = reference_models(protocol, defense.name, calibrations, cache)
    model = suspect if suspect is not None else load_model(model_path, protocol, architecture)
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
        return _finished(model, decide(proof))
    if mk_path is None:
        raise ArenaError("public verification needs the owner's proof or the marking key")
    _, key = load_key(mk_path, vk_path)
    with subset_lock(ledger):
        index = _unspent_subset(ledger, key.fingerprint, key.vk.subsets, subset)
        claim = decide(make_proof(key, index))
        ledger.append("spent", f"{key.fingerprint}:{index}", label=f"public {model_path}")
    return _finished(model, claim)


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
    model_path: Path | str,
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
    ctx = Context(protocol=protocol)
    try:
        evidence = measure(defense, model, opened, ctx, null)
    except PartialAnswers as partial:
        # The service broke off and partial decisions were accepted: the triggers it
        # answered decide, where the null makes that sound (arena.ownership.remote).
        evidence = measure(defense, model, partial.restrict(opened, null.kind), ctx, null)
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


def sound_null(calibrations: CalibrationStore, protocol: Protocol, defense: Defense) -> Null:
    """The scheme's null on ``protocol``, as configured (its parameters' calibration); a
    verdict that may end up in a dispute is never decided against an unsound one (a
    scheme whose labels are not uniform, uncalibrated, or whose fitted null its own
    calibration caught claiming clean models)."""
    null = calibrations.null(protocol, defense.name, defense.params_dict())
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
