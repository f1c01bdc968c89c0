"""The match record: one typed, versioned record per match, holding numbers, never text
made for people.

``arena run`` builds a ``MatchRecord``; the results database keeps it as JSON
(``to_dict``); the leaderboard, sweep, CLI and tests read it back (``from_dict``). A
stored row of an older shape is brought to the current one by ``upgrade``, the one place
that knows the older shapes; ``from_dict`` then reads the current shape strictly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from arena.core.plugin import ThreatModel
from arena.core.smoothing import Certificate
from arena.core.stats import Evidence
from arena.core.verify import UNSOUND_NULLS, Null
from arena.util.errors import ArenaError

# 1: every record written before records carried their version (no "record_version");
#    fields were added to it over time, and ``upgrade`` fills what each lacks.
# 2: "record_version"; every field present; the null always has a kind; the plugin
#    versions name the packages of the defense and the attack (None when not recorded).
# 3: the attack's weight change (``attacked.weight_change``), the marked model's
#    certificate (``certificate``) and its check on the attacked model
#    (``attacked.certificate_check``), the key's evidence on another user's copy
#    (``other_user``); None where not measured.
RECORD_VERSION = 3

Interval = tuple[float, float]  # a 95% Clopper-Pearson interval, low and high


class _Record:
    """``to_dict``: the fields as JSON values (dataclasses as objects, tuples as lists)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _interval(value: Any) -> Interval:
    low, high = value
    return float(low), float(high)


def _optional_interval(value: Any) -> Interval | None:
    return None if value is None else _interval(value)


@dataclass(frozen=True)
class EvidenceRecord(_Record):
    """``successes`` of ``trials`` answers agreed with a key, tested against a null of mean
    ``null_p`` (a beta-binomial when ``null_dispersion`` > 0): the p-value and verdict as
    they were measured, not recomputed."""

    successes: int
    trials: int
    null_p: float
    alpha: float
    p_value: float
    verified: bool
    null_dispersion: float
    required_successes: int | None  # the fewest successes that verify; None: none can
    # False on a task-changing attack's model: it answers another task's labels, so its
    # black-box agreement is kept but is not evidence.
    applicable: bool = True

    @property
    def agreement(self) -> float:
        return self.successes / self.trials if self.trials else 0.0

    @classmethod
    def of(cls, evidence: Evidence, *, applicable: bool = True) -> EvidenceRecord:
        return cls.from_dict({**evidence.to_dict(), "applicable": applicable})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvidenceRecord:
        required = data["required_successes"]
        return cls(
            successes=int(data["successes"]),
            trials=int(data["trials"]),
            null_p=float(data["null_p"]),
            alpha=float(data["alpha"]),
            p_value=float(data["p_value"]),
            verified=bool(data["verified"]),
            null_dispersion=float(data["null_dispersion"]),
            required_successes=None if required is None else int(required),
            applicable=bool(data.get("applicable", True)),  # claims and label checks: always
        )


@dataclass(frozen=True)
class Measurement(_Record):
    """A model's accuracy on the protocol's test split and the mark's evidence on it."""

    test_acc: float
    test_acc_ci95: Interval
    evidence: EvidenceRecord

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        return cls(
            float(data["test_acc"]),
            _interval(data["test_acc_ci95"]),
            EvidenceRecord.from_dict(data["evidence"]),
        )


@dataclass(frozen=True)
class DetectorRecord(_Record):
    """A query filter's counts: false positives on the clean test queries, detections on
    the verifier's queries, each rate with its Clopper-Pearson 95% interval."""

    test_queries: int
    test_flagged: int
    test_flagged_rate: float
    test_flagged_ci95: Interval
    verification_queries: int
    verification_flagged: int
    verification_flagged_rate: float
    verification_flagged_ci95: Interval

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorRecord:
        return cls(
            test_queries=int(data["test_queries"]),
            test_flagged=int(data["test_flagged"]),
            test_flagged_rate=float(data["test_flagged_rate"]),
            test_flagged_ci95=_interval(data["test_flagged_ci95"]),
            verification_queries=int(data["verification_queries"]),
            verification_flagged=int(data["verification_flagged"]),
            verification_flagged_rate=float(data["verification_flagged_rate"]),
            verification_flagged_ci95=_interval(data["verification_flagged_ci95"]),
        )


@dataclass(frozen=True)
class WeightChangeRecord(_Record):
    """How far the attack moved the marked model's weights (``arena.core.smoothing``)."""

    l2: float  # over every parameter
    relative: float  # l2 / the marked model's parameter norm
    max_abs: float
    parameters: int
    buffers_changed: bool  # BatchNorm statistics and other buffers moved too

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightChangeRecord:
        return cls(
            l2=float(data["l2"]),
            relative=float(data["relative"]),
            max_abs=float(data["max_abs"]),
            parameters=int(data["parameters"]),
            buffers_changed=bool(data["buffers_changed"]),
        )


@dataclass(frozen=True)
class CertificateRecord(_Record):
    """The marked model's certificate (``arena.core.smoothing.Certificate``): how many key
    inputs each of ``samples`` noisy copies answered (``histogram[k]``: copies that
    answered exactly k), from which the count certified at any radius follows."""

    sigma: float
    samples: int
    confidence: float
    histogram: tuple[int, ...]

    def certified(self, radius: float) -> int:
        return Certificate.from_dict(self.to_dict()).certified(radius)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CertificateRecord:
        return cls(
            sigma=float(data["sigma"]),
            samples=int(data["samples"]),
            confidence=float(data["confidence"]),
            histogram=tuple(int(count) for count in data["histogram"]),
        )


@dataclass(frozen=True)
class CertificateCheckRecord(_Record):
    """The certificate read at the attack's weight change (``radius``) and checked on the
    attacked model, when the attack moved parameters only and stayed where the
    certificate still promises something: the ``certified`` count of key inputs, the
    median count of the attacked model's ``samples`` noisy copies, and an upper
    confidence bound on it. ``violated``: that bound lies below the certified count, which
    is a bug in the certificate or its scheme."""

    radius: float
    certified: int
    median: int
    upper: int
    violated: bool
    samples: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CertificateCheckRecord:
        return cls(
            radius=float(data["radius"]),
            certified=int(data["certified"]),
            median=int(data["median"]),
            upper=int(data["upper"]),
            violated=bool(data["violated"]),
            samples=int(data["samples"]),
        )


@dataclass(frozen=True)
class AttackedMeasurement(Measurement):
    """The attacked model: what the attacker serves, measured as the others are."""

    architecture: str  # the attacked model's; the victim's unless the attack trains another
    # The seed paper's RTLL/RTAL verification, with the owner's output layer put back.
    owner_head_evidence: EvidenceRecord | None
    detector: DetectorRecord | None  # a query-time filter's counts, when one served
    # None: another architecture or an ensemble (no weights to compare), or not measured.
    weight_change: WeightChangeRecord | None = None
    certificate_check: CertificateCheckRecord | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackedMeasurement:
        head, detector = data["owner_head_evidence"], data["detector"]
        change, check = data["weight_change"], data["certificate_check"]
        return cls(
            **vars(Measurement.from_dict(data)),
            architecture=str(data["architecture"]),
            owner_head_evidence=None if head is None else EvidenceRecord.from_dict(head),
            detector=None if detector is None else DetectorRecord.from_dict(detector),
            weight_change=None if change is None else WeightChangeRecord.from_dict(change),
            certificate_check=None if check is None else CertificateCheckRecord.from_dict(check),
        )


@dataclass(frozen=True)
class NullRecord(_Record):
    """The null the evidence was tested against (``arena.core.verify.Null``), or, in a
    record from before nulls had kinds, ``pooled`` (a pooled calibration) or ``nominal``
    (the scheme's own binomial)."""

    kind: str
    source: str
    p: float | None
    dispersion: float
    calibration: int | None
    smallest_p_value: float | None

    @property
    def sound(self) -> bool:
        return self.kind not in UNSOUND_NULLS

    @classmethod
    def of(cls, null: Null) -> NullRecord:
        return cls.from_dict(null.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NullRecord:
        p, calibration, smallest = data["p"], data["calibration"], data["smallest_p_value"]
        return cls(
            kind=str(data["kind"]),
            source=str(data["source"]),
            p=None if p is None else float(p),
            dispersion=float(data["dispersion"]),
            calibration=None if calibration is None else int(calibration),
            smallest_p_value=None if smallest is None else float(smallest),
        )


@dataclass(frozen=True)
class LabelCheckRecord(_Record):
    """A key's trigger labels against the majority answer of clean reference models."""

    evidence: EvidenceRecord
    reference_models: int
    passed: bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelCheckRecord:
        return cls(
            EvidenceRecord.from_dict(data["evidence"]),
            int(data["reference_models"]),
            bool(data["passed"]),
        )


@dataclass(frozen=True)
class ClaimRecord(_Record):
    """One party's claim of ownership on one model, with the outcome of each check."""

    party: str  # "owner" or "attacker"
    model: str  # "original" or "attacked"
    evidence: EvidenceRecord
    label_check: LabelCheckRecord | None  # None: the scheme has no trigger labels to check
    key_ledger_position: int
    model_ledger_position: int
    registered_before_model_seen: bool
    verified: bool
    failures: tuple[str, ...]  # the checks it failed, in words: the protocol's reasons

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClaimRecord:
        check = data["label_check"]
        return cls(
            party=str(data["party"]),
            model=str(data["model"]),
            evidence=EvidenceRecord.from_dict(data["evidence"]),
            label_check=None if check is None else LabelCheckRecord.from_dict(check),
            key_ledger_position=int(data["key_ledger_position"]),
            model_ledger_position=int(data["model_ledger_position"]),
            registered_before_model_seen=bool(data["registered_before_model_seen"]),
            verified=bool(data["verified"]),
            failures=tuple(str(failure) for failure in data["failures"]),
        )


@dataclass(frozen=True)
class CleanModelClaims(_Record):
    """A forger's key claimed on independent clean models, none of which it saw."""

    models: int
    mean_agreement: float
    verified_without_label_check: int
    verified_without_label_check_ci95: Interval
    label_check_applies: bool
    claimed_with_label_check: int | None = None  # None: the scheme has no label check
    claimed_with_label_check_ci95: Interval | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CleanModelClaims:
        claimed = data.get("claimed_with_label_check")  # absent where no label check applies
        return cls(
            models=int(data["models"]),
            mean_agreement=float(data["mean_agreement"]),
            verified_without_label_check=int(data["verified_without_label_check"]),
            verified_without_label_check_ci95=_interval(data["verified_without_label_check_ci95"]),
            label_check_applies=bool(data["label_check_applies"]),
            claimed_with_label_check=None if claimed is None else int(claimed),
            claimed_with_label_check_ci95=_optional_interval(
                data.get("claimed_with_label_check_ci95")
            ),
        )


@dataclass(frozen=True)
class DisputeRecord(_Record):
    """Forgery and piracy: every claim judged by the ownership protocol, and the verdict."""

    threat: str
    attacker_key_registered: str
    claims: tuple[ClaimRecord, ...]
    clean_models: CleanModelClaims | None  # forgery: the attacker's key on clean models
    attack_succeeded: bool
    reason: str

    def claim(self, party: str, model: str) -> ClaimRecord | None:
        return next((c for c in self.claims if (c.party, c.model) == (party, model)), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DisputeRecord:
        clean = data["clean_models"]
        return cls(
            threat=str(data["threat"]),
            attacker_key_registered=str(data["attacker_key_registered"]),
            claims=tuple(ClaimRecord.from_dict(claim) for claim in data["claims"]),
            clean_models=None if clean is None else CleanModelClaims.from_dict(clean),
            attack_succeeded=bool(data["attack_succeeded"]),
            reason=str(data["reason"]),
        )


_PLUGIN_VERSIONS = ("arena", "defense", "attack", "defense_package", "attack_package")


@dataclass(frozen=True)
class Versions(_Record):
    """The versions a match ran with: the arena's, each plugin's and the package that
    provided it, and the environment two runs must share to agree to the bit."""

    arena: str
    defense: str
    attack: str
    # "<distribution> <version>" of each plugin; None in records from before it was kept.
    defense_package: str | None
    attack_package: str | None
    environment: Mapping[str, Any]  # packages, device kind, threads, CPU capability

    def to_dict(self) -> dict[str, Any]:
        # Stored flat, as the database's versions column has always been.
        plugins = {name: getattr(self, name) for name in _PLUGIN_VERSIONS}
        return {**plugins, **_plain(self.environment)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Versions:
        environment = {k: copy.deepcopy(v) for k, v in data.items() if k not in _PLUGIN_VERSIONS}
        return cls(
            arena=str(data["arena"]),
            defense=str(data["defense"]),
            attack=str(data["attack"]),
            defense_package=data["defense_package"],
            attack_package=data["attack_package"],
            environment=environment,
        )


# The fields of a match record that are plain text.
_TEXT_FIELDS = (
    "protocol",
    "protocol_fingerprint",
    "model",
    "defense",
    "defense_access",
    "attack",
    "threat",
    "outcome",
    "device",
)


@dataclass(frozen=True)
class MatchRecord(_Record):
    """One (protocol, defense, attack, seed) match: what was run, what was measured on the
    clean, marked and attacked models, the verdict and its reason, and the costs."""

    protocol: str
    protocol_version: int
    protocol_fingerprint: str
    model: str  # the victim's architecture (a timm name)
    defense: str
    defense_params: Mapping[str, Any]
    defense_access: str  # "black-box" or "white-box"
    attack: str
    attack_params: Mapping[str, Any]
    threat: str  # none, removal, forgery, piracy, evasion
    threat_model: ThreatModel
    seed: int
    null: NullRecord
    clean: Measurement
    marked: Measurement
    attacked: AttackedMeasurement
    claim: DisputeRecord | None  # forgery and piracy: the dispute decides the verdict
    functionality_preservation: float  # marked test accuracy - clean test accuracy
    attack_succeeded: bool
    outcome: str  # the reason for the verdict
    attack_info: Mapping[str, Any]  # what the attack reports of itself
    attack_seconds: float  # the attack's own cost, also when its model came from the cache
    cached: Mapping[str, bool]  # phase -> whether its artifact came from the cache
    seconds: Mapping[str, float]  # phase -> seconds of this run, and "total"
    device: str
    versions: Versions
    # The marked model's certificate, for schemes that certify (None for the others).
    certificate: CertificateRecord | None = None
    # The key measured on another user's copy, for schemes that mark one per user.
    other_user: EvidenceRecord | None = None
    # Set on a finished match returned from the store: seconds to check and return it.
    # It describes that call, not the match, and is never stored.
    replay_seconds: float | None = None

    @property
    def unsound_null(self) -> str | None:
        """The kind of the null when it decides no verdict (uncalibrated, refuted)."""
        return None if self.null.sound else self.null.kind

    def to_dict(self) -> dict[str, Any]:
        data = {"record_version": RECORD_VERSION, **super().to_dict()}
        if self.replay_seconds is None:
            del data["replay_seconds"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MatchRecord:
        """The record of ``data`` in the current version's shape (``upgrade`` an older
        one first, or use ``load``)."""
        if data.get("record_version") != RECORD_VERSION:
            raise ArenaError(
                f"a match record of version {data.get('record_version')!r} read as version "
                f"{RECORD_VERSION}: load it through arena.storage.record.load"
            )
        claim, replay = data["claim"], data.get("replay_seconds")
        certificate, other_user = data["certificate"], data["other_user"]
        return cls(
            **{name: str(data[name]) for name in _TEXT_FIELDS},
            protocol_version=int(data["protocol_version"]),
            defense_params=copy.deepcopy(dict(data["defense_params"])),
            attack_params=copy.deepcopy(dict(data["attack_params"])),
            threat_model=ThreatModel(**data["threat_model"]),
            seed=int(data["seed"]),
            null=NullRecord.from_dict(data["null"]),
            clean=Measurement.from_dict(data["clean"]),
            marked=Measurement.from_dict(data["marked"]),
            attacked=AttackedMeasurement.from_dict(data["attacked"]),
            claim=None if claim is None else DisputeRecord.from_dict(claim),
            functionality_preservation=float(data["functionality_preservation"]),
            attack_succeeded=bool(data["attack_succeeded"]),
            attack_info=copy.deepcopy(dict(data["attack_info"])),
            attack_seconds=float(data["attack_seconds"]),
            cached={phase: bool(hit) for phase, hit in data["cached"].items()},
            seconds={phase: float(value) for phase, value in data["seconds"].items()},
            versions=Versions.from_dict(data["versions"]),
            certificate=None if certificate is None else CertificateRecord.from_dict(certificate),
            other_user=None if other_user is None else EvidenceRecord.from_dict(other_user),
            replay_seconds=None if replay is None else float(replay),
        )


def load(raw: Mapping[str, Any], where: str = "a stored match record") -> MatchRecord:
    """The typed record of a stored row of any version."""
    try:
        return MatchRecord.from_dict(upgrade(raw))
    except KeyError as error:
        raise ArenaError(f"{where} is malformed: no field {error}") from None
    except (TypeError, ValueError, ArenaError) as error:
        raise ArenaError(f"{where} is malformed: {error}") from None


def upgrade(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw``, a stored record of any version, in the current version's shape.

    The one place that knows older shapes. Fields it does not name are left as they are
    (``MatchRecord.from_dict`` checks them); ``raw`` itself is not changed.
    """
    record = copy.deepcopy(dict(raw))
    version = record.get("record_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArenaError(f"a stored match record has version {version!r}, not a version number")
    if version > RECORD_VERSION:
        raise ArenaError(
            f"a stored match record has version {version}; this arena reads versions up to "
            f"{RECORD_VERSION}: upgrade the arena to read it"
        )
    if version == 1:
        _from_version_1(record)
    if version <= 2:
        _from_version_2(record)
    record["record_version"] = RECORD_VERSION
    return record


def _from_version_1(record: dict[str, Any]) -> None:
    """Version 1 grew over time; fill what a record of each stage lacks."""
    record.setdefault("threat", "removal")  # before claim and query-time attacks
    record.setdefault("defense_access", "black-box")  # before white-box schemes
    record.setdefault("attack_info", {})
    record.setdefault("claim", None)  # before forgery and piracy
    seconds = record.setdefault("seconds", {})
    # Before the attack's own cost was kept apart: this run's attack phase.
    record.setdefault("attack_seconds", seconds.get("attack", 0.0))
    versions = record.setdefault("versions", {})
    for kind in ("defense", "attack"):  # before plugins' packages were recorded
        versions.setdefault(f"{kind}_package", None)
    attacked = record.get("attacked")
    if isinstance(attacked, dict):
        attacked.setdefault("architecture", record.get("model"))  # before other architectures
        attacked.setdefault("owner_head_evidence", None)
        attacked.setdefault("detector", None)  # before query-time filters
    for evidence in _evidence_dicts(record):
        evidence.setdefault("null_dispersion", 0.0)  # before fitted nulls
        evidence.setdefault("required_successes", None)
        evidence.setdefault("applicable", True)  # before task-changing attacks
    record["null"] = _null_of_version_1(record)


def _from_version_2(record: dict[str, Any]) -> None:
    """Before weight changes, certificates and other users' copies were measured."""
    record.setdefault("certificate", None)
    record.setdefault("other_user", None)
    attacked = record.get("attacked")
    if isinstance(attacked, dict):
        attacked.setdefault("weight_change", None)
        attacked.setdefault("certificate_check", None)


def _evidence_dicts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every evidence object in ``record``: models, owner head, claims and label checks."""
    found = [record.get(part, {}).get("evidence") for part in ("clean", "marked", "attacked")]
    found.append(record.get("attacked", {}).get("owner_head_evidence"))
    for claim in (record.get("claim") or {}).get("claims", []):
        found.append(claim.get("evidence"))
        found.append((claim.get("label_check") or {}).get("evidence"))
    return [evidence for evidence in found if isinstance(evidence, dict)]


def _null_of_version_1(record: dict[str, Any]) -> dict[str, Any]:
    null = dict(record.get("null") or {})
    if null.get("kind") is None:
        # Before nulls had kinds: a pooled calibration's p when the evidence was tested
        # against it, else the scheme's nominal null; before nulls were stored, nominal.
        tested = (record.get("attacked") or {}).get("evidence", {}).get("null_p")
        pooled = null.get("p") is not None and null["p"] == tested
        null["kind"] = "pooled" if pooled else "nominal"
        null.setdefault("source", "not recorded (a record from before the null was stored)")
    null.setdefault("p", None)
    null.setdefault("dispersion", 0.0)
    null.setdefault("calibration", None)
    null.setdefault("smallest_p_value", None)
    return null
