"""One match: clean -> mark -> verify -> attack -> verify -> score -> store.

Every model is an artifact keyed by what determines it, so the marked model is trained
once and reused by every attack against it, and re-running a finished match only loads
and re-measures.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.core.context import Context, Victim, check_seed, default_device
from arena.core.data import load_splits
from arena.core.environment import environment, precision
from arena.core.keys import Key
from arena.core.models import clone_model, head_state, load_head_state
from arena.core.plugin import Attack, ClaimAttempt, Defense, QueryFilter
from arena.core.protocols import Protocol, get_protocol
from arena.core.registry import attacks, defenses
from arena.core.smoothing import Certificate, WeightChange, median_upper_bound, weight_change
from arena.core.stats import Evidence, clopper_pearson
from arena.core.training import accuracy
from arena.core.verify import Null, measure
from arena.ownership.claims import Dispute, adjudicate, unopened_claim
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationSnapshot, CalibrationStore
from arena.storage.clean import artifact_base, clean_model
from arena.storage.record import (
    AttackedMeasurement,
    CertificateCheckRecord,
    CertificateRecord,
    DetectorRecord,
    DisputeRecord,
    EvidenceRecord,
    MatchRecord,
    Measurement,
    NullRecord,
    Versions,
    WeightChangeRecord,
)
from arena.storage.results import ResultSnapshot, ResultStore
from arena.util.errors import ArenaError, KeyTamperedError
from arena.util.files import content_hash
from arena.util.progress import Reporter, silent
from arena.util.version import __version__


@dataclass(frozen=True)
class MatchSpec:
    """What a user asks for: ``arena run --defense D --attack A --protocol P --seed S``."""

    defense: str = "backdoor-wm"
    attack: str = "none"
    protocol: str = "mnist5k"
    seed: int = 0
    model: str | None = None  # a timm model name other than the protocol's
    defense_params: Mapping[str, Any] = field(default_factory=dict)
    attack_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The verdict on an attack and the reason for it."""

    succeeded: bool
    reason: str


def score_removal(
    protocol: Protocol,
    marked_acc: float,
    marked: Evidence,
    attacked_acc: float,
    attacked: Evidence,
    *,
    changes_task: bool = False,
    owner_head: Evidence | None = None,
) -> Outcome:
    """DESIGN.md's rule: the mark fails AND accuracy stays within delta of the marked model.

    A task-changing attack (transfer learning to another data set, Adi et al. 2018,
    Table 2) is scored as the seed paper scores it. Its model answers another task's
    labels, so neither its black-box evidence nor its accuracy on the owner's test set
    is a measure of anything; the mark is tested with the owner's output layer put back
    (``owner_head``), and the attack succeeds when that evidence is not verified. The new
    task's accuracy is reported by the attack as information only: the arena has no
    reference accuracy on another task to hold it to, so there is no delta condition.
    """
    if not marked.verified:
        return Outcome(False, "no verified mark before the attack: nothing to remove")
    if changes_task:
        if owner_head is None:
            raise ValueError("a task-changing attack is scored on owner-head evidence; none given")
        if owner_head.verified:
            return Outcome(False, "the mark is still verified with the owner's output layer")
        return Outcome(
            True,
            "the mark is not verified with the owner's output layer put back (the model "
            "solves another task; its accuracy there is information, not a condition)",
        )
    if attacked.verified:
        return Outcome(False, "the mark is still verified")
    drop = marked_acc - attacked_acc
    if drop > protocol.delta:
        return Outcome(
            False,
            f"the mark is not verified, but test accuracy fell {100 * drop:.1f} points "
            f"(more than delta = {100 * protocol.delta:.0f})",
        )
    return Outcome(True, "the mark is not verified and test accuracy stayed within delta")


def run_match(
    spec: MatchSpec,
    *,
    store: ResultStore | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """``play_match``'s record as JSON data (``MatchRecord.to_dict``): ``arena run --json``
    and callers that read the record as data."""
    record = play_match(spec, store=store, cache=cache, progress=progress, device=device)
    return record.to_dict()


def play_match(
    spec: MatchSpec,
    *,
    store: ResultStore | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
) -> MatchRecord:
    """Run one match and store its record; a finished match is returned from the store."""
    store = store or ResultStore()
    store.check_writable()  # the record is written at the end: refuse now, not after training
    match_id, record, replayed = play_unsaved(
        spec, store=store, cache=cache, progress=progress, device=device
    )
    if not replayed:
        store.save(match_id, record)
    return record


def play_unsaved(
    spec: MatchSpec,
    *,
    store: ResultStore | ResultSnapshot | None = None,
    cache: ArtifactCache | None = None,
    progress: Reporter = silent,
    device: torch.device | None = None,
    discard_attacked: bool = False,
    calibrations: CalibrationSnapshot | None = None,
) -> tuple[str, MatchRecord, bool]:
    """Run one match without storing it: its id, its record and whether the record is a
    finished one from ``store`` (which is only read: the stored matches and the
    calibrations). For a sweep whose one writer is elsewhere (``arena sweep --executor
    ray``: the driver stores what its workers played, and hands them snapshots of the
    stored matches and calibrations, ``store`` and ``calibrations``, so that a worker
    never opens the database).

    ``discard_attacked``: the attacked model's file is deleted once measured
    (``ArtifactCache.discard_model``); its stored match still counts as finished, and
    re-measuring it (a newer calibration) plays the attack again.
    """
    match = _resolve(spec, store, cache, progress, device, calibrations)
    started = time.perf_counter()
    timer = _PhaseTimer()
    cached: dict[str, bool] = {}
    with timer("keygen"):
        key_spec = _key_spec(match)
        key, cached["key"] = _key(match.defense, match.ctx, match.cache, key_spec)
    names = _name_artifacts(match, key_spec, key)
    # The verification null: the protocol's calibration for this scheme, if it has one.
    null = match.calibrations.null(
        get_protocol(spec.protocol), match.defense.name, match.defense.params_dict()
    )
    finished = _finished(match, names, null)
    if finished is not None:
        replay = dataclasses.replace(
            finished,
            cached={phase: True for phase in finished.cached},
            replay_seconds=time.perf_counter() - started,
        )
        return names.match_id, replay, True
    with timer("data"):
        splits = match.ctx.splits
    clean, marked, ctx, digests = _clean_and_mark(match, names, key, timer, cached)
    match = dataclasses.replace(match, ctx=ctx)  # from here on, holding the clean model
    with timer("verify"):
        owner = _measure_owner(match.defense, clean, marked, key, ctx, null, digests)
    other_user = _other_user(match, names, key, ctx, null, timer)
    # What the attacker knows: the scheme, the public key (mk stays with the owner), its
    # own data; never the owner's clean model.
    victim = Victim(match.defense, names.vk, splits.attacker)
    attacker = dataclasses.replace(ctx, victim=victim, clean=None)
    with timer("attack"):
        attacked = _attack(match, names, marked, key, attacker, cached)
    with timer("verify"):
        certificate = owner["marked"].certificate
        measured_key = attacked.client_key or key
        served = _measure_served(match, measured_key, marked, attacked, attacker, null, certificate)
    verdict = _decide(match, key, marked, owner["marked"], attacked, served, null, timer)
    record = _record(match, null, owner, served, attacked, verdict, len(splits.test), timer, cached)
    if other_user is not None:
        record = dataclasses.replace(record, other_user=EvidenceRecord.of(other_user))
    if discard_attacked:
        match.cache.discard_model(names.attacked_folder)
    return names.match_id, record, False


@dataclass(frozen=True)
class _Match:
    """A match resolved before any training: its plugins, contexts and stores."""

    spec: MatchSpec
    protocol: Protocol
    defense: Defense
    attack: Attack
    ctx: Context  # the owner's; its clean model is trained (or loaded) when first asked for
    architecture: str  # the attacked model's: the victim's unless the attack trains another
    attacked_protocol: Protocol
    cache: ArtifactCache
    store: ResultStore | ResultSnapshot  # where finished matches are looked up
    calibrations: CalibrationStore | CalibrationSnapshot  # the nulls

    @property
    def same_architecture(self) -> bool:
        return self.architecture == self.protocol.model


def _resolve(
    spec: MatchSpec,
    store: ResultStore | ResultSnapshot | None,
    cache: ArtifactCache | None,
    progress: Reporter,
    device: torch.device | None,
    calibrations: CalibrationStore | CalibrationSnapshot | None = None,
) -> _Match:
    """Resolve and validate everything before any training starts."""
    protocol = get_protocol(spec.protocol).with_model(spec.model)
    defense: Defense = defenses.get(spec.defense)(spec.defense_params)
    attack: Attack = attacks.get(spec.attack)(spec.attack_params)
    not_applicable = attack.applies_to(defense)
    if not_applicable is not None:
        raise ArenaError(
            f"attack {attack.name!r} does not apply to {defense.name!r}: {not_applicable}"
        )
    check_seed(spec.seed)
    cache = cache or ArtifactCache()
    store = store or ResultStore()
    if calibrations is None:
        if isinstance(store, ResultSnapshot):
            raise ArenaError(
                "a match played from a snapshot of the database needs its calibrations"
            )
        calibrations = CalibrationStore(store.path)
    ctx = Context(
        protocol=protocol, seed=spec.seed, device=device or default_device(), progress=progress
    )
    ctx = dataclasses.replace(ctx, clean=functools.cache(lambda: clean_model(ctx, cache)[0]))
    # The attacked model's architecture: the victim's unless the attack trains another.
    architecture = attack.architecture(ctx) or protocol.model
    if attack.changes_task and architecture != protocol.model:
        raise ArenaError(
            f"attack {attack.name!r} changes the task and the architecture; the owner-head "
            "evidence that decides a task-changing attack needs the victim's architecture"
        )
    attacked_protocol = protocol.with_model(architecture)
    # The data every step reads, before the first step trains: a missing or corrupt data
    # set is one line now rather than after hours of the owner's training.
    load_splits(protocol)
    attack.check_data(ctx)
    return _Match(
        spec,
        protocol,
        defense,
        attack,
        ctx,
        architecture,
        attacked_protocol,
        cache,
        store,
        calibrations,
    )


@dataclass(frozen=True)
class _Names:
    """Every artifact of a match, named by what determines it: all known up front."""

    vk: Path  # the owner's public verification key, which every attacker knows
    clean_folder: Path
    marked_spec: dict[str, Any]
    marked_folder: Path
    attacked_spec: dict[str, Any]
    attacked_folder: Path
    match_id: str


def _key_spec(match: _Match) -> dict[str, Any]:
    defense = match.defense
    return {
        **artifact_base(match.protocol, match.spec.seed, precision(match.ctx.device)),
        "defense": defense.name,
        "defense_version": defense.version,
        "defense_params": defense.params_dict(),
    }


def stored_key(
    protocol: Protocol,
    seed: int,
    defense: str,
    params: Mapping[str, Any],
    versions: Mapping[str, Any],
    cache: ArtifactCache | None = None,
) -> Key | None:
    """The key a stored match was played with (``protocol`` with the match's model, its
    seed, the defense plugin's name, its parameters in full and the record's flat
    versions), when ``cache`` still holds it; None when it does not or the plugin is not
    installed. Never made anew: a new key is another key."""
    try:
        key_type = defenses.get(defense).key_type
    except ArenaError:
        return None
    spec = {
        **artifact_base(protocol, seed, str(versions.get("precision", "fp32"))),
        "arena": versions["arena"],  # the arena that made the key
        "defense": defense,
        "defense_version": versions["defense"],
        "defense_params": dict(params),
    }
    folder = (cache or ArtifactCache()).folder("key", spec)
    if not (folder / "vk.json").exists():
        return None
    return key_type.load(folder)


def _name_artifacts(match: _Match, key_spec: dict[str, Any], key: Key) -> _Names:
    defense, attack, cache = match.defense, match.attack, match.cache
    clean_folder = cache.folder(
        "clean", artifact_base(match.protocol, match.spec.seed, precision(match.ctx.device))
    )
    marked_spec = {**key_spec, "key": key.fingerprint}
    if defense.starts_from == "clean":
        marked_spec["clean"] = clean_folder.name
    attacked_spec = {
        **marked_spec,
        "attack": attack.name,
        "attack_version": attack.version,
        "attack_params": attack.params_dict(),
    }
    return _Names(
        vk=cache.folder("key", key_spec) / "vk.json",
        clean_folder=clean_folder,
        marked_spec=marked_spec,
        marked_folder=cache.folder("marked", marked_spec),
        attacked_spec=attacked_spec,
        attacked_folder=cache.folder("attacked", attacked_spec),
        match_id=content_hash(attacked_spec),
    )


def _finished(match: _Match, names: _Names, null: Null) -> MatchRecord | None:
    """The stored record of this match, when it still stands.

    A finished match: its key opened, every model file is intact (the attacked model's,
    unless it was discarded once measured) and its null is still the current one, so the
    stored measurements of exactly these artifacts stand. A newer calibration re-measures
    (the models come from the cache; a discarded attacked model is attacked again).
    """
    finished = match.store.match(names.match_id)
    if finished is None or (finished.null.calibration, finished.null.kind) != (
        null.calibration,
        null.kind,
    ):
        return None
    folders = (names.clean_folder, names.marked_folder)
    if any(match.cache.check(folder) is None for folder in folders):
        return None
    if match.cache.check(names.attacked_folder, discarded=True) is None:
        return None
    return finished


def _clean_and_mark(
    match: _Match, names: _Names, key: Key, timer: _PhaseTimer, cached: dict[str, bool]
) -> tuple[nn.Module, nn.Module, Context, tuple[str, str]]:
    """The clean and the marked model, the owner's context holding the clean one, and the
    two models' file digests."""
    defense, cache, ctx = match.defense, match.cache, match.ctx
    with timer("clean"):
        clean, clean_meta, cached["clean"] = clean_model(ctx, cache)
        ctx = dataclasses.replace(ctx, clean=lambda: clean)

    with timer("mark"):

        def mark(model: nn.Module) -> dict[str, Any]:
            if defense.starts_from == "clean":
                model.load_state_dict(clean.state_dict())
            return {"model": defense.mark(model, key, ctx)}

        marked, marked_meta, cached["marked"] = cache.model(
            names.marked_folder,
            build=ctx.owner_model,
            train=mark,
            spec=names.marked_spec,
        )
    return clean, marked, ctx, (clean_meta["sha256"], marked_meta["sha256"])


@dataclass(frozen=True)
class _Measured:
    """A model's test accuracy and the mark's evidence on it."""

    acc: float
    evidence: Evidence
    certificate: Certificate | None  # the marked model's, for schemes that certify


# The owner's two models measured, by everything the numbers depend on (the model files'
# digests first): a sweep plays every attack against the same clean and marked model and
# measures them once, not once per attack. A few entries: the sweep goes defense by defense.
_OWNER_MEASURES: OrderedDict[str, dict[str, _Measured]] = OrderedDict()
_OWNER_MEASURES_KEPT = 8


def _measure_owner(
    defense: Defense,
    clean: nn.Module,
    marked: nn.Module,
    key: Key,
    ctx: Context,
    null: Null,
    digests: tuple[str, str],
) -> dict[str, _Measured]:
    """The clean and the marked model, measured: the key on both, accuracies first."""
    memo = content_hash(
        {
            "models": list(digests),
            "key": key.fingerprint,
            "defense": [defense.name, defense.version, defense.params_dict()],
            "null": repr(null),
            "protocol": ctx.protocol.fingerprint,
            "device": str(ctx.device),
        }
    )
    if memo in _OWNER_MEASURES:
        _OWNER_MEASURES.move_to_end(memo)
        return _OWNER_MEASURES[memo]
    splits = ctx.splits
    clean_acc = accuracy(clean, splits.test.images, splits.test.labels, ctx.device)
    marked_acc = accuracy(marked, splits.test.images, splits.test.labels, ctx.device)
    if defense.serves:  # what clients get is the API's answers, not the model's
        marked = defense.serve(marked, key, ctx)
        marked_acc = accuracy(marked, splits.test.images, splits.test.labels, ctx.device)
    clean_evidence = measure(defense, clean, key, ctx, null)
    marked_evidence = measure(defense, marked, key, ctx, null)
    measured = {
        "clean": _Measured(clean_acc, clean_evidence, None),
        "marked": _Measured(marked_acc, marked_evidence, defense.certificate(marked, key, ctx)),
    }
    _OWNER_MEASURES[memo] = measured
    while len(_OWNER_MEASURES) > _OWNER_MEASURES_KEPT:
        _OWNER_MEASURES.popitem(last=False)
    return measured


@dataclass(frozen=True)
class _Attacked:
    """What the attack phase left: the attacked model, its metadata, and the attacker's
    claim (loaded) or the dispute that rejects it (a key that does not open)."""

    model: nn.Module
    meta: dict[str, Any]
    claim: ClaimAttempt | None
    unopened: Dispute | None
    # A serving scheme's key built from the attacker's queries to the owner's API: what
    # the attacked model is measured on (None: the owner's key).
    client_key: Key | None = None


def _attack(
    match: _Match,
    names: _Names,
    marked: nn.Module,
    key: Key,
    attacker: Context,
    cached: dict[str, bool],
) -> _Attacked:
    attack, defense, ctx = match.attack, match.defense, match.ctx
    attacked_folder, attacked_protocol = names.attacked_folder, match.attacked_protocol

    def run_attack(_container: nn.Module) -> dict[str, Any]:
        # The attack starts from a copy of the marked model; the container built to
        # load a cached result is not used.
        victim = clone_model(marked)
        if defense.serves:  # the attacker reaches the model only through the owner's API
            victim = defense.serve(victim, key, attacker)
        outcome = attack.run(victim, attacker)
        meta = {
            "model": outcome.model,
            "replaced_head": outcome.replaced_head,
            "info": outcome.info,
        }
        if defense.serves:  # written, like a claim, before the metadata that finishes it
            client = defense.client_key(victim, key, attacker)
            if client is not None:
                client.save(attacked_folder / "client")
            meta["client_key"] = client is not None
        if outcome.claim is not None:  # written before the metadata that finishes it
            outcome.claim.key.save(attacked_folder / "claim")
            meta["claim_registered"] = outcome.claim.registered
        return meta

    attacked, attack_meta, cached["attacked"] = match.cache.model(
        attacked_folder,
        build=lambda: attack.build(attacker, lambda: _new_model(attacked_protocol, ctx, "attack")),
        train=run_attack,
        spec=names.attacked_spec,
    )
    claim, unopened = None, None
    if "claim_registered" in attack_meta:
        try:  # loading a key opens its commitments: the protocol's first check
            claimed_key = defense.key_type.load(attacked_folder / "claim")
            claim = ClaimAttempt(claimed_key, attack_meta["claim_registered"])
        except KeyTamperedError as error:
            unopened = unopened_claim(attack.threat, attack_meta["claim_registered"], error)
    client_key = None
    if attack_meta.get("client_key"):
        client_key = defense.key_type.load(attacked_folder / "client")
    return _Attacked(attacked, attack_meta, claim, unopened, client_key)


@dataclass(frozen=True)
class _Served(_Measured):
    """The attacked model as the attacker serves it, measured as the owner's are."""

    owner_head: Evidence | None  # with the owner's output layer put back
    detector: DetectorRecord | None  # a query-time filter's counts
    weight_change: WeightChange | None  # from the marked model's weights
    certificate_check: CertificateCheckRecord | None


def _measure_served(
    match: _Match,
    key: Key,
    marked: nn.Module,
    result: _Attacked,
    attacker: Context,
    null: Null,
    certificate: Certificate | None,
) -> _Served:
    attack, defense, ctx = match.attack, match.defense, match.ctx
    attacked, splits = result.model, ctx.splits
    served = attack.serve(attacked, attacker)
    detector = None
    if isinstance(served, QueryFilter):
        served.reset_counts()
    attacked_acc = accuracy(served, splits.test.images, splits.test.labels, ctx.device)
    if isinstance(served, QueryFilter):
        detector = {"test_queries": served.queries, "test_flagged": served.flagged}
        served.reset_counts()
    # Black-box evidence queries what the attacker serves; white-box evidence reads
    # the weights, which a query-time filter does not change.
    probe = served if defense.access == "black-box" else attacked
    attacked_evidence = measure(defense, probe, key, ctx, null)
    if detector is not None:
        detector.update(verification_queries=served.queries, verification_flagged=served.flagged)
    owner_head_evidence = None
    if (result.meta.get("replaced_head") or attack.changes_task) and match.same_architecture:
        # The seed paper's RTLL/RTAL verification: put the owner's output layer back.
        restored = clone_model(attacked)
        load_head_state(restored, head_state(marked))
        if defense.access == "black-box":
            restored = attack.serve(restored, attacker)
        owner_head_evidence = measure(defense, restored, key, ctx, null)
    counts = None if detector is None else _detector_record(detector)
    change = weight_change(marked, attacked) if match.same_architecture else None
    check = _check_certificate(defense, attacked, key, ctx, certificate, change)
    return _Served(
        acc=attacked_acc,
        evidence=attacked_evidence,
        certificate=None,
        owner_head=owner_head_evidence,
        detector=counts,
        weight_change=change,
        certificate_check=check,
    )


def _check_certificate(
    defense: Defense,
    attacked: nn.Module,
    key: Key,
    ctx: Context,
    certificate: Certificate | None,
    change: WeightChange | None,
) -> CertificateCheckRecord | None:
    """The marked model's certificate read at the attack's weight change and checked on
    the attacked model, when the attack stayed within it: only its parameters moved, to
    where the certificate still promises at least one key input."""
    if certificate is None or change is None or change.buffers_changed:
        return None
    certified = certificate.certified(change.l2)
    if certified == 0:
        return None
    counts = defense.smoothed_agreement(attacked, key, ctx, certificate)
    upper = median_upper_bound(counts, certificate.confidence)
    return CertificateCheckRecord(
        radius=change.l2,
        certified=certified,
        median=int(counts.median()),
        upper=upper,
        violated=upper < certified,
        samples=len(counts),
    )


def _decide(
    match: _Match,
    key: Key,
    marked: nn.Module,
    owner_marked: _Measured,
    attacked: _Attacked,
    served: _Served,
    null: Null,
    timer: _PhaseTimer,
) -> tuple[Outcome, Dispute | None]:
    """The verdict: the removal rule, or the dispute of a claim, unless the null is unsound."""
    attack, defense, ctx = match.attack, match.defense, match.ctx
    outcome = score_removal(
        match.protocol,
        owner_marked.acc,
        owner_marked.evidence,
        served.acc,
        served.evidence,
        changes_task=attack.changes_task,
        owner_head=served.owner_head,
    )
    dispute = attacked.unopened
    if attacked.claim is not None:
        with timer("verify"):
            calibrations = match.calibrations
            dispute = adjudicate(
                defense,
                key,
                marked,
                attacked.model,
                attacked.claim,
                attack.threat,
                ctx,
                null,
                calibrations,
                match.cache,
            )
    if dispute is not None:
        outcome = Outcome(dispute.attack_succeeded, dispute.reason)
    if not null.sound:
        # Measured and kept, but no verdict: a null that is not sound cannot say whether
        # the mark survived (nor whether a clean model would have been claimed).
        outcome = Outcome(False, f"the {null.kind} null decides nothing: {null.source}")
    return outcome, dispute


def _record(
    match: _Match,
    null: Null,
    owner: dict[str, _Measured],
    served: _Served,
    result: _Attacked,
    verdict: tuple[Outcome, Dispute | None],
    test_size: int,
    timer: _PhaseTimer,
    cached: dict[str, bool],
) -> MatchRecord:
    protocol, defense, attack, ctx = match.protocol, match.defense, match.attack, match.ctx
    outcome, dispute = verdict
    # Measured and kept, but a task-changing attack's model answers another task's
    # labels: not evidence.
    attacked = _measurement(served, test_size, applicable=not attack.changes_task)
    owner_head = served.owner_head
    return MatchRecord(
        protocol=protocol.name,
        protocol_version=protocol.version,
        protocol_fingerprint=protocol.fingerprint,
        model=protocol.model,
        defense=defense.name,
        defense_params=defense.params_dict(),
        defense_access=defense.access,
        attack=attack.name,
        attack_params=attack.params_dict(),
        threat=attack.threat,
        threat_model=attack.threat_model(ctx),
        seed=match.spec.seed,
        null=NullRecord.of(null),
        clean=_measurement(owner["clean"], test_size),
        marked=_measurement(owner["marked"], test_size),
        attacked=AttackedMeasurement(
            **vars(attacked),
            architecture=match.architecture,
            owner_head_evidence=EvidenceRecord.of(owner_head) if owner_head else None,
            detector=served.detector,
            weight_change=(
                WeightChangeRecord.from_dict(dataclasses.asdict(served.weight_change))
                if served.weight_change
                else None
            ),
            certificate_check=served.certificate_check,
        ),
        claim=DisputeRecord.from_dict(dispute.to_dict()) if dispute else None,
        functionality_preservation=owner["marked"].acc - owner["clean"].acc,
        attack_succeeded=outcome.succeeded,
        outcome=outcome.reason,
        attack_info=result.meta.get("info", {}),
        # The attack's own cost, also when its model came from the cache.
        attack_seconds=result.meta.get("seconds", timer.seconds["attack"]),
        cached=cached,
        seconds={**timer.seconds, "total": sum(timer.seconds.values())},
        device=str(ctx.device),
        # The packages, device kind, thread count and CPU capability: what two runs must
        # share to agree to the bit (README, "Reproducibility").
        versions=Versions(
            arena=__version__,
            defense=defense.version,
            attack=attack.version,
            # Whose plugin was measured: two packages may use one name over time.
            defense_package=defenses.info(defense.name).source,
            attack_package=attacks.info(attack.name).source,
            environment=environment(ctx.device),
        ),
        certificate=(
            CertificateRecord.from_dict(owner["marked"].certificate.to_dict())
            if owner["marked"].certificate
            else None
        ),
    )


def _new_model(protocol: Protocol, ctx: Context, purpose: str) -> nn.Module:
    """A fresh model of ``protocol``'s architecture, seeded as ``ctx`` seeds its own."""
    if protocol is ctx.protocol:
        return ctx.new_model(purpose)
    return Context(protocol=protocol, seed=ctx.seed, device=ctx.device).new_model(purpose)


def _key(
    defense: Defense,
    ctx: Context,
    cache: ArtifactCache,
    key_spec: dict[str, Any],
    make: Callable[[], Key | None] | None = None,
) -> tuple[Key | None, bool]:
    """The key of ``key_spec`` from the cache, or made (``make``, default KeyGen) and
    cached; None when ``make`` makes none."""
    folder = cache.folder("key", key_spec)
    if (folder / "vk.json").exists():  # written last: a key there is whole
        return defense.key_type.load(folder), True
    with cache.lock(folder):  # two runs of one match share one key, never make two
        if (folder / "vk.json").exists():
            return defense.key_type.load(folder), True
        key = make() if make is not None else defense.keygen(ctx)
        if key is not None:
            key.save(folder)
        return key, False


def _other_user(
    match: _Match, names: _Names, key: Key, ctx: Context, null: Null, timer: _PhaseTimer
) -> Evidence | None:
    """The evidence of ``key`` on another user's copy, for schemes that mark one copy per
    user (``Defense.other_copy_key``): marked as the user's own copy is, with the other
    key, and cached beside it."""
    defense, cache = match.defense, match.cache
    with timer("keygen"):
        other_spec = {**names.marked_spec, "copy": "other-user"}
        other, _ = _key(defense, ctx, cache, other_spec, lambda: defense.other_copy_key(key, ctx))
    if other is None:
        return None
    with timer("mark"):

        def mark(model: nn.Module) -> dict[str, Any]:
            if defense.starts_from == "clean":
                model.load_state_dict(ctx.clean_model().state_dict())
            return {"model": defense.mark(model, other, ctx)}

        spec = {**names.marked_spec, "key": other.fingerprint}
        copy, _, _ = cache.model(
            cache.folder("marked", spec), build=ctx.owner_model, train=mark, spec=spec
        )
    with timer("verify"):
        return measure(defense, copy, key, ctx, null)


def _detector_record(counts: dict[str, int]) -> DetectorRecord:
    """The query filter's rates: false positives on clean test queries, detections on the
    verifier's queries, each with its Clopper-Pearson 95% interval."""
    rates: dict[str, Any] = {}
    for kind in ("test", "verification"):
        queries, flagged = counts[f"{kind}_queries"], counts[f"{kind}_flagged"]
        rates[f"{kind}_flagged_rate"] = flagged / queries if queries else 0.0
        rates[f"{kind}_flagged_ci95"] = clopper_pearson(flagged, queries)
    return DetectorRecord(**counts, **rates)


def _measurement(measured: _Measured, test_size: int, *, applicable: bool = True) -> Measurement:
    correct = round(measured.acc * test_size)
    return Measurement(
        test_acc=measured.acc,
        test_acc_ci95=clopper_pearson(correct, test_size),
        evidence=EvidenceRecord.of(measured.evidence, applicable=applicable),
    )


class _PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
