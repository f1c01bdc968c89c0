"""The JSON record of ``arena run --json``, checked field by field."""

from __future__ import annotations

import json
import math

from arena.stats import binomial_p_value

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
    """Every field the issue's schema promises, with the right types and ranges."""
    json.loads(json.dumps(record))  # serialisable as it is
    assert isinstance(record["protocol"], str)
    assert isinstance(record["defense"], str) and isinstance(record["attack"], str)
    assert isinstance(record["seed"], int)
    # Whose plugins were measured: the distribution and version of each.
    for kind in ("defense", "attack"):
        package = record["versions"][f"{kind}_package"]
        assert isinstance(package, str) and len(package.split()) == 2, package
    assert 0.0 <= record["clean"]["test_acc"] <= 1.0
    for part in ("marked", "attacked"):
        assert 0.0 <= record[part]["test_acc"] <= 1.0
        check_evidence(record[part]["evidence"])
        low, high = record[part]["test_acc_ci95"]
        assert low <= record[part]["test_acc"] <= high
    owner_head = record["attacked"]["owner_head_evidence"]
    if owner_head is not None:
        check_evidence(owner_head)
    assert isinstance(record["attacked"]["architecture"], str)
    # A task-changing attack's black-box evidence is kept but marked not applicable; the
    # owner-head evidence decides its verdict, so it must be there.
    applicable = record["attacked"]["evidence"].get("applicable", True)
    assert isinstance(applicable, bool)
    if not applicable:
        assert owner_head is not None
        if record["attack_succeeded"]:
            assert not owner_head["verified"]
    assert isinstance(record["attack_succeeded"], bool)
    assert isinstance(record["outcome"], str) and record["outcome"]
    assert record["seconds"] and all(
        isinstance(value, float) and value >= 0 for value in record["seconds"].values()
    )
    claim = record.get("claim")
    if claim is not None:  # forgery and piracy: the dispute decides the verdict
        assert claim["attack_succeeded"] is record["attack_succeeded"]
        assert claim["reason"] == record["outcome"]
        for judged in claim["claims"]:
            check_evidence(judged["evidence"])
            assert judged["verified"] is (not judged["failures"])
    detector = record["attacked"].get("detector")
    if detector is not None:  # evasion behind a query filter
        for kind in ("test", "verification"):
            assert 0 <= detector[f"{kind}_flagged"] <= detector[f"{kind}_queries"]
    threat_model = record["threat_model"]
    assert {"data", "labels", "query_budget", "epochs"} <= set(threat_model)
