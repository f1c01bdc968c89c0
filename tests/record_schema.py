"""The JSON record of ``arena run --json``, checked field by field; and a whole record
built without running a match, for tests of what reads records."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from arena.core.plugin import ThreatModel
from arena.core.protocols import get_protocol
from arena.core.stats import Evidence, binomial_p_value
from arena.storage.record import (
    AttackedMeasurement,
    EvidenceRecord,
    MatchRecord,
    Measurement,
    NullRecord,
    Versions,
)

SMOKE = get_protocol("smoke")

EVIDENCE_FIELDS = {"successes", "trials", "null_p", "p_value", "alpha", "verified"}


def check_evidence(evidence: dict) -> None:
    assert EVIDENCE_FIELDS <= set(evidence), evidence
    assert isinstance(evidence["successes"], int) and isinstance(evidence["trials"], int)
    assert 0 <= evidence["successes"] <= evidence["trials"] and evidence["trials"] > 0
    assert 0 < evidence["null_p"] < 1 and 0 < evidence["alpha"] < 1
    expected = binomial_p_value(evidence["successes"], evidence["trials"], evidence["null_p"])
    assert math.isclose(evidence["p_value"], expected, rel_tol=1e-9)
    assert evidence["verified"] is (evidence["p_value"] <= evidence["alpha"])


def check_record(record: dict) -> None:
    """Every field the issue's schema promises, with the right types and ranges: the dict
    is exactly a current ``MatchRecord``'s, and its numbers hold together."""
    json.loads(json.dumps(record))  # serialisable as it is
    typed = MatchRecord.from_dict(record)  # strict: every field, of the current version
    assert typed.to_dict() == json.loads(json.dumps(record)), "fields beyond the record's"
    # Equality takes 1 for True: the JSON types themselves.
    assert isinstance(record["seed"], int) and isinstance(record["attack_succeeded"], bool)
    assert all(isinstance(value, float) for value in record["seconds"].values())
    # Whose plugins were measured: the distribution and version of each.
    for package in (typed.versions.defense_package, typed.versions.attack_package):
        assert isinstance(package, str) and len(package.split()) == 2, package
    assert 0.0 <= typed.clean.test_acc <= 1.0
    for part in (typed.marked, typed.attacked):
        assert 0.0 <= part.test_acc <= 1.0
        check_evidence(asdict(part.evidence))
        low, high = part.test_acc_ci95
        assert low <= part.test_acc <= high
    owner_head = typed.attacked.owner_head_evidence
    if owner_head is not None:
        check_evidence(asdict(owner_head))
    # A task-changing attack's black-box evidence is kept but marked not applicable; the
    # owner-head evidence decides its verdict, so it must be there.
    if not typed.attacked.evidence.applicable:
        assert owner_head is not None
        if typed.attack_succeeded:
            assert not owner_head.verified
    assert typed.outcome
    assert typed.seconds and all(value >= 0 for value in typed.seconds.values())
    claim = typed.claim
    if claim is not None:  # forgery and piracy: the dispute decides the verdict
        assert claim.attack_succeeded is typed.attack_succeeded
        assert claim.reason == typed.outcome
        for judged in claim.claims:
            check_evidence(asdict(judged.evidence))
            assert judged.verified is (not judged.failures)
    detector = typed.attacked.detector
    if detector is not None:  # evasion behind a query filter
        assert 0 <= detector.test_flagged <= detector.test_queries
        assert 0 <= detector.verification_flagged <= detector.verification_queries
    change = typed.attacked.weight_change
    if change is not None:  # the attacked model has the marked model's parameters
        assert typed.attacked.architecture == typed.model
        assert change.l2 >= 0 and change.relative >= 0 and change.parameters > 0
        assert change.max_abs <= change.l2 + 1e-12
    if typed.other_user is not None:  # the key on another user's copy
        check_evidence(asdict(typed.other_user))
    certificate = typed.certificate
    if certificate is not None:  # a count of copies for each count of key inputs
        assert len(certificate.histogram) == typed.marked.evidence.trials + 1
        assert sum(certificate.histogram) == certificate.samples
        assert certificate.certified(0.0) <= typed.marked.evidence.trials
    check = typed.attacked.certificate_check
    if check is not None:  # the certificate was read at the attack's weight change
        assert certificate is not None and change is not None and not change.buffers_changed
        assert check.radius == change.l2 and check.certified == certificate.certified(change.l2)
        assert check.median <= check.upper
        assert not check.violated, "an attack within the certified radius broke it"


def evidence_record(successes: int, trials: int = 20, null_p: float = 0.1) -> EvidenceRecord:
    return EvidenceRecord.of(Evidence(successes, trials, null_p, alpha=1e-3))


def sample_record(
    seed: int = 0,
    attacked_successes: int = 15,
    *,
    attack: str = "ftal",
    attack_params: dict | None = None,
    defense_params: dict | None = None,
    attack_package: str = "watermark-arena 0.1.0",
) -> MatchRecord:
    """A whole current record of a smoke match, built without running one."""
    attacked = evidence_record(attacked_successes)
    return MatchRecord(
        protocol="smoke",
        protocol_version=SMOKE.version,
        protocol_fingerprint=SMOKE.fingerprint,
        model=SMOKE.model,
        defense="backdoor-wm",
        defense_params=defense_params or {},
        defense_access="black-box",
        attack=attack,
        attack_params=attack_params or {},
        threat="removal",
        threat_model=ThreatModel(data="attacker-split", labels="true", epochs=1),
        seed=seed,
        null=NullRecord("exact", "the scheme's own binomial", None, 0.0, None, 1e-20),
        clean=Measurement(0.9, (0.85, 0.94), evidence_record(2)),
        marked=Measurement(0.9, (0.85, 0.94), evidence_record(20)),
        attacked=AttackedMeasurement(
            test_acc=0.88,
            test_acc_ci95=(0.83, 0.92),
            evidence=attacked,
            architecture=SMOKE.model,
            owner_head_evidence=None,
            detector=None,
        ),
        claim=None,
        functionality_preservation=0.0,
        attack_succeeded=not attacked.verified,
        outcome="the mark is still verified" if attacked.verified else "the mark is gone",
        attack_info={"steps": 3},
        attack_seconds=1.0,
        cached={"key": False, "clean": False, "marked": False, "attacked": False},
        seconds={"attack": 1.0, "total": 2.0},
        device="cpu",
        versions=Versions(
            arena="0.1.0",
            defense="1",
            attack="1",
            defense_package="watermark-arena 0.1.0",
            attack_package=attack_package,
            environment={"torch": "2.0", "threads": 1},
        ),
    )
