"""Forgery and piracy judged as claims of ownership (``arena.claims``), on ``smoke``."""

from __future__ import annotations

import pytest
import torch

from arena.core.context import Context
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.core.stats import Evidence
from arena.eval.leaderboard import build
from arena.eval.match import MatchSpec, run_match
from arena.eval.sweep import plan
from arena.ownership.claims import ClaimCheck, _resolve_piracy
from arena.ownership.public import LabelCheck
from arena.report.leaderboard import claim_cells
from arena.storage.calibrations import CalibrationStore
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from attacks.common import attacker_context


@pytest.fixture(scope="module")
def arena(tmp_path_factory, smoke_calibration):
    store = ResultStore(tmp_path_factory.mktemp("claims") / "results.sqlite")
    CalibrationStore(store.path).save(smoke_calibration["record"])
    return store, smoke_calibration["cache"]


def _run(arena, attack: str, defense: str = "backdoor-wm") -> dict:
    store, cache = arena
    spec = MatchSpec(defense=defense, attack=attack, protocol="smoke")
    return run_match(spec, store=store, cache=cache)


def _claims(record: dict) -> dict[tuple[str, str], dict]:
    return {(c["party"], c["model"]): c for c in record["claim"]["claims"]}


def test_piracy_is_resolved_for_the_owner_with_both_keys_measured(arena):
    record = _run(arena, "piracy")
    claims = _claims(record)
    assert set(claims) == {(p, m) for p in ("owner", "attacker") for m in ("original", "attacked")}
    # The pirate did implant its key: its claim on its own model passes every check ...
    assert claims["attacker", "attacked"]["verified"], claims["attacker", "attacked"]
    # ... but the owner's key still verifies on the pirated model, and the pirate's key
    # neither verifies on the owner's original nor came first in the ledger.
    assert claims["owner", "attacked"]["verified"]
    assert not claims["attacker", "original"]["verified"]
    assert not claims["attacker", "original"]["registered_before_model_seen"]
    assert record["attack_succeeded"] is False
    assert record["outcome"].startswith("resolved for the owner")
    assert "the owner's key verifies on the pirated model" in record["outcome"]


def test_a_universal_true_label_key_is_stopped_by_the_label_check_alone(arena):
    record = _run(arena, "forge-universal")
    forged = _claims(record)["attacker", "attacked"]
    # Registered in advance and answered by the model: only the label check stands.
    assert forged["registered_before_model_seen"] and forged["evidence"]["verified"]
    assert forged["label_check"]["passed"] is False
    assert record["attack_succeeded"] is False
    clean = record["claim"]["clean_models"]
    assert clean["verified_without_label_check"] == clean["models"] >= 3
    assert clean["claimed_with_label_check"] == 0
    # Both false-claim rates reach the leaderboard with their Clopper-Pearson intervals.
    low, high = clean["claimed_with_label_check_ci95"]
    assert low == 0 < high < 1
    store, _ = arena
    rows = [r for r in build(store, get_protocol("smoke")).matches if r.attack == "forge-universal"]
    cell = claim_cells(rows[0])[7]
    assert f"0/{clean['models']} with label check (CI95 0-{100 * high:.0f}%)" in cell, cell


def test_a_forgery_from_the_verification_key_opens_nothing(arena):
    record = _run(arena, "forge-from-vk")
    assert record["attack_info"]["commitments_opened"] == 0
    assert record["attack_info"]["hash_evaluations"] > 1000
    assert record["attack_succeeded"] is False
    assert "does not open" in record["outcome"]


def _check(party, model, successes, *, key=0, seen=1, label_check=None) -> ClaimCheck:
    return ClaimCheck(party, model, Evidence(successes, 20, 0.1, 1e-3), label_check, key, seen)


def test_a_claim_needs_every_check():
    assert _check("attacker", "attacked", 20).verified
    late = _check("attacker", "attacked", 20, key=3, seen=1)
    assert late.failures() == ["the key was registered after the model was first seen"]
    rejected = LabelCheck(Evidence(19, 20, 0.1, 1e-3), references=3)
    assert "label check" in _check("attacker", "attacked", 20, label_check=rejected).failures()[0]
    assert "answers 2/20" in _check("attacker", "attacked", 2).failures()[0]


def test_piracy_succeeds_when_the_owner_key_no_longer_verifies():
    checks = {
        ("attacker", "attacked"): _check("attacker", "attacked", 20, key=2, seen=3),
        ("attacker", "original"): _check("attacker", "original", 2, key=2, seen=1),
        ("owner", "original"): _check("owner", "original", 20, key=0, seen=1),
        ("owner", "attacked"): _check("owner", "attacked", 2, key=0, seen=3),
    }
    succeeded, reason = _resolve_piracy(checks)
    assert succeeded and "cannot tell the claims apart" in reason
    checks["owner", "attacked"] = _check("owner", "attacked", 18, key=0, seen=3)
    succeeded, reason = _resolve_piracy(checks)
    assert not succeeded and reason.startswith("resolved for the owner")


def test_an_attack_that_does_not_apply_is_refused_and_skipped(arena):
    store, cache = arena
    with pytest.raises(ArenaError, match="does not apply to 'uchida'"):
        run_match(
            MatchSpec(defense="uchida", attack="forge-universal", protocol="smoke"),
            store=store,
            cache=cache,
        )
    skipped: list = []
    specs = plan("smoke", ["uchida", "backdoor-wm"], ["forge-universal"], [0], skipped)
    assert [(s.defense, s.attack) for s in specs] == [("backdoor-wm", "forge-universal")]
    assert [(d, a) for d, a, _ in skipped] == [("uchida", "forge-universal")]


def test_an_attacker_short_of_source_images_draws_a_smaller_key():
    """mnist5k's attacker split holds 87 images of content's source class 1, fewer than the
    protocol's 100 triggers: the pirate's key has 87, the owner's keygen would refuse."""
    ctx = Context(protocol=get_protocol("mnist5k"), device=torch.device("cpu"))
    attacker = attacker_context(ctx, "piracy", ctx.new_model())
    available = int((ctx.splits.attacker.labels == 1).sum())
    assert available < ctx.protocol.trigger_size
    content = defenses.get("content")()
    key = content.for_data(attacker).keygen(attacker)
    assert len(key.labels) == available and set(key.labels.tolist()) == {0}
    scheme = defenses.get("backdoor-wm")()
    full = scheme.for_data(attacker).keygen(attacker)
    assert len(full.labels) == ctx.protocol.trigger_size
