"""One match: clean -> mark -> verify -> attack -> verify -> score -> store.

Every model is an artifact keyed by what determines it, so the marked model is trained
once and reused by every attack against it, and re-running a finished match only loads
and re-measures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from arena import __version__
from arena.calibration import CalibrationStore, measure
from arena.claims import adjudicate, unopened_claim
from arena.clean import artifact_base, clean_model
from arena.context import Context, check_seed, default_device
from arena.environment import environment
from arena.errors import ArenaError, KeyTamperedError
from arena.models import clone_model, head_state, load_head_state
from arena.plugin import Attack, ClaimAttempt, Defense, Key, QueryFilter
from arena.progress import Reporter, silent
from arena.protocols import Protocol, get_protocol
from arena.registry import attacks, defenses
from arena.stats import Evidence, clopper_pearson
from arena.store import ArtifactCache, ResultStore, content_hash
from arena.training import accuracy


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
    """Run one match and store its record; a finished match is returned from the store."""
    protocol = get_protocol(spec.protocol).with_model(spec.model)
    # Resolve and validate everything before any training starts.
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
    store.check_writable()  # the record is written at the end: refuse now, not after training
    ctx = Context(
        protocol=protocol, seed=spec.seed, device=device or default_device(), progress=progress
    )
    ctx.clean_provider = lambda: clean_model(ctx, cache)[0]
    # The attacked model's architecture: the victim's unless the attack trains another.
    architecture = attack.architecture(ctx) or protocol.model
    same_architecture = architecture == protocol.model
    attacked_protocol = protocol.with_model(architecture)
    if attack.changes_task and not same_architecture:
        raise ArenaError(
            f"attack {attack.name!r} changes the task and the architecture; the owner-head "
            "evidence that decides a task-changing attack needs the victim's architecture"
        )
    started = time.perf_counter()
    timer = _PhaseTimer()
    cached: dict[str, bool] = {}

    # Every artifact is named by what determines it, so all names are known up front.
    base = artifact_base(protocol, spec.seed)
    clean_folder = cache.folder("clean", base)
    with timer("keygen"):
        key_spec = {
            **base,
            "defense": defense.name,
            "defense_version": defense.version,
            "defense_params": defense.params_dict(),
        }
        key, cached["key"] = _key(defense, ctx, cache, key_spec)
    ctx.victim_scheme = defense
    ctx.victim_vk = cache.folder("key", key_spec) / "vk.json"  # public; mk stays with the owner
    marked_spec = {**key_spec, "key": key.fingerprint}
    if defense.starts_from == "clean":
        marked_spec["clean"] = clean_folder.name
    marked_folder = cache.folder("marked", marked_spec)
    attacked_spec = {
        **marked_spec,
        "attack": attack.name,
        "attack_version": attack.version,
        "attack_params": attack.params_dict(),
    }
    attacked_folder = cache.folder("attacked", attacked_spec)
    match_id = content_hash(attacked_spec)

    # The verification null: the protocol's calibration for this scheme, if it has one.
    null = CalibrationStore(store.path).null(get_protocol(spec.protocol), defense.name)

    finished = store.get(match_id)
    if (
        finished is not None
        and finished.get("null", {}).get("calibration") == null.calibration
        and finished.get("null", {}).get("kind") == null.kind
        and all(
            cache.check(folder) is not None
            for folder in (clean_folder, marked_folder, attacked_folder)
        )
    ):
        # A finished match: its key opened, every model file is intact and its null is
        # still the current one, so the stored measurements of exactly these artifacts
        # stand. A newer calibration re-measures (the models come from the cache).
        finished["cached"] = {phase: True for phase in finished["cached"]}
        finished["replay_seconds"] = time.perf_counter() - started
        return finished

    with timer("data"):
        splits = ctx.splits

    with timer("clean"):
        clean, _, cached["clean"] = clean_model(ctx, cache)
        ctx.clean_provider = lambda: clean

    with timer("mark"):

        def mark(model: nn.Module) -> dict[str, Any]:
            if defense.starts_from == "clean":
                model.load_state_dict(clean.state_dict())
            return {"model": defense.mark(model, key, ctx)}

        marked, _, cached["marked"] = cache.model(
            marked_folder,
            build=ctx.owner_model,
            train=mark,
            spec=marked_spec,
        )

    with timer("verify"):
        clean_acc = accuracy(clean, splits.test.images, splits.test.labels, ctx.device)
        marked_acc = accuracy(marked, splits.test.images, splits.test.labels, ctx.device)
        clean_evidence = measure(defense, clean, key, ctx, null)
        marked_evidence = measure(defense, marked, key, ctx, null)

    with timer("attack"):

        def run_attack(_container: nn.Module) -> dict[str, Any]:
            # The attack starts from a copy of the marked model; the container built to
            # load a cached result is not used.
            outcome = attack.run(clone_model(marked), ctx)
            meta = {
                "model": outcome.model,
                "replaced_head": outcome.replaced_head,
                "info": outcome.info,
            }
            if outcome.claim is not None:  # written before the metadata that finishes it
                outcome.claim.key.save(attacked_folder / "claim")
                meta["claim_registered"] = outcome.claim.registered
            return meta

        attacked, attack_meta, cached["attacked"] = cache.model(
            attacked_folder,
            build=lambda: attack.build(ctx, lambda: _new_model(attacked_protocol, ctx, "attack")),
            train=run_attack,
            spec=attacked_spec,
        )
        claim, unopened = None, None
        if "claim_registered" in attack_meta:
            try:  # loading a key opens its commitments: the protocol's first check
                claimed_key = defense.key_type.load(attacked_folder / "claim")
                claim = ClaimAttempt(claimed_key, attack_meta["claim_registered"])
            except KeyTamperedError as error:
                unopened = unopened_claim(attack.threat, attack_meta["claim_registered"], error)

    with timer("verify"):
        served = attack.serve(attacked, ctx)
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
            detector.update(
                verification_queries=served.queries, verification_flagged=served.flagged
            )
            detector = _detector_record(detector)
        owner_head_evidence = None
        if (attack_meta.get("replaced_head") or attack.changes_task) and same_architecture:
            # The seed paper's RTLL/RTAL verification: put the owner's output layer back.
            restored = clone_model(attacked)
            load_head_state(restored, head_state(marked))
            if defense.access == "black-box":
                restored = attack.serve(restored, ctx)
            owner_head_evidence = measure(defense, restored, key, ctx, null)

    outcome = score_removal(
        protocol,
        marked_acc,
        marked_evidence,
        attacked_acc,
        attacked_evidence,
        changes_task=attack.changes_task,
        owner_head=owner_head_evidence,
    )
    dispute = unopened
    if claim is not None:
        with timer("verify"):
            calibrations = CalibrationStore(store.path)
            dispute = adjudicate(
                defense, key, marked, attacked, claim, attack.threat, ctx, null, calibrations, cache
            )
    if dispute is not None:
        outcome = Outcome(dispute.attack_succeeded, dispute.reason)
    if not null.sound:
        # Measured and kept, but no verdict: a null that is not sound cannot say whether
        # the mark survived (nor whether a clean model would have been claimed).
        outcome = Outcome(False, f"the {null.kind} null decides nothing: {null.source}")
    test_size = len(splits.test)
    attacked_record = _model_record(attacked_acc, test_size, attacked_evidence)
    if attack.changes_task:
        # Measured and kept, but the model answers another task's labels: not evidence.
        attacked_record["evidence"]["applicable"] = False
    record = {
        "protocol": protocol.name,
        "protocol_version": protocol.version,
        "protocol_fingerprint": protocol.fingerprint,
        "model": protocol.model,
        "defense": defense.name,
        "defense_params": defense.params_dict(),
        "defense_access": defense.access,
        "attack": attack.name,
        "attack_params": attack.params_dict(),
        "threat": attack.threat,
        "threat_model": attack.threat_model(ctx).to_dict(),
        "seed": spec.seed,
        "null": null.to_dict(),
        "clean": _model_record(clean_acc, test_size, clean_evidence),
        "marked": _model_record(marked_acc, test_size, marked_evidence),
        "attacked": {
            **attacked_record,
            "architecture": architecture,
            "owner_head_evidence": owner_head_evidence.to_dict() if owner_head_evidence else None,
            "detector": detector,
        },
        "claim": dispute.to_dict() if dispute else None,
        "functionality_preservation": marked_acc - clean_acc,
        "attack_succeeded": outcome.succeeded,
        "outcome": outcome.reason,
        "attack_info": attack_meta.get("info", {}),
        # The attack's own cost, also when its model came from the cache.
        "attack_seconds": attack_meta.get("seconds", timer.seconds["attack"]),
        "cached": cached,
        "seconds": timer.seconds,
        "device": str(ctx.device),
        # The packages, device kind, thread count and CPU capability: what two runs must
        # share to agree to the bit (README, "Reproducibility").
        "versions": {
            "arena": __version__,
            "defense": defense.version,
            "attack": attack.version,
            # Whose plugin was measured: two packages may use one name over time.
            "defense_package": defenses.info(defense.name).source,
            "attack_package": attacks.info(attack.name).source,
            **environment(ctx.device),
        },
    }
    record["seconds"]["total"] = sum(timer.seconds.values())
    store.save(match_id, record)
    return record


def _new_model(protocol: Protocol, ctx: Context, purpose: str) -> nn.Module:
    """A fresh model of ``protocol``'s architecture, seeded as ``ctx`` seeds its own."""
    if protocol is ctx.protocol:
        return ctx.new_model(purpose)
    return Context(protocol=protocol, seed=ctx.seed, device=ctx.device).new_model(purpose)


def _key(
    defense: Defense, ctx: Context, cache: ArtifactCache, key_spec: dict[str, Any]
) -> tuple[Key, bool]:
    folder = cache.folder("key", key_spec)
    if (folder / "vk.json").exists():  # written last: a key there is whole
        return defense.key_type.load(folder), True
    with cache.lock(folder):  # two runs of one match share one key, never make two
        if (folder / "vk.json").exists():
            return defense.key_type.load(folder), True
        key = defense.keygen(ctx)
        key.save(folder)
        return key, False


def _detector_record(counts: dict[str, int]) -> dict[str, Any]:
    """The query filter's rates: false positives on clean test queries, detections on the
    verifier's queries, each with its Clopper-Pearson 95% interval."""
    record: dict[str, Any] = dict(counts)
    for kind in ("test", "verification"):
        queries, flagged = counts[f"{kind}_queries"], counts[f"{kind}_flagged"]
        record[f"{kind}_flagged_rate"] = flagged / queries if queries else 0.0
        record[f"{kind}_flagged_ci95"] = list(clopper_pearson(flagged, queries))
    return record


def _model_record(test_acc: float, test_size: int, evidence: Evidence) -> dict[str, Any]:
    correct = round(test_acc * test_size)
    return {
        "test_acc": test_acc,
        "test_acc_ci95": list(clopper_pearson(correct, test_size)),
        "evidence": evidence.to_dict(),
    }


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
