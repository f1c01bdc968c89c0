"""The calibrated null on ``smoke``: reference models, the stored null, and its use."""

from __future__ import annotations

import dataclasses

import pytest

from arena.calibration import (
    CalibrationStore,
    Null,
    calibrate,
    reference_models,
    reference_set,
    to_markdown,
)
from arena.errors import ArenaError
from arena.match import MatchSpec, run_match
from arena.protocols import get_protocol
from arena.stats import Evidence, binomial_p_value, clopper_pearson
from arena.store import ResultStore

SMOKE = get_protocol("smoke")


def test_reference_set_is_round_robin_over_architectures():
    references = reference_set(SMOKE, models=3, held_out=2)
    assert [r.architecture for r in references] == [SMOKE.reference_models[i % 2] for i in range(5)]
    assert [r.role for r in references] == ["calibration"] * 3 + ["held-out"] * 2
    assert len({r.seed for r in references}) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"models": 0, "held_out": 1}, "at least one model"),
        ({"models": 2, "held_out": -1}, "cannot be negative"),
        ({"models": 4, "held_out": 0, "architectures": ("resnet18",)}, "two architectures"),
    ],
)
def test_reference_set_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ArenaError, match=message):
        reference_set(SMOKE, **kwargs)


def test_calibration_pools_the_answers_of_every_model(smoke_calibration):
    record = smoke_calibration["record"]
    null = record["null"]
    rows = record["models"]
    assert len(rows) == 3 and {row["architecture"] for row in rows} == set(SMOKE.reference_models)
    assert null["trials"] == 3 * 5 * SMOKE.trigger_size == sum(row["trials"] for row in rows)
    assert null["successes"] == sum(row["successes"] for row in rows)
    low, high = clopper_pearson(null["successes"], null["trials"], null["confidence"])
    assert (null["lower"], null["upper"]) == pytest.approx((low, high))
    assert null["p"] == pytest.approx(max(null["nominal"], high))
    assert all(row["test_acc"] > 0.5 for row in rows)  # real, trained clean models


def test_false_positives_are_counted_on_held_out_models(smoke_calibration):
    record = smoke_calibration["record"]
    fp = record["false_positives"]
    assert fp["pairs"] == 2 * 10 == sum(row["keys"] for row in record["held_out"])
    assert fp["verified"] == sum(row["verified"] for row in record["held_out"])
    assert fp["null_p"] == pytest.approx(record["null"]["p"])
    assert record["false_positives_nominal"]["null_p"] == pytest.approx(0.1)
    # A verification at a higher null can only verify fewer pairs.
    assert fp["verified"] <= record["false_positives_nominal"]["verified"]
    assert fp["ci95"][0] <= fp["rate"] <= fp["ci95"][1]


def test_label_check_rejects_in_distribution_keys(smoke_calibration):
    inside = smoke_calibration["record"]["in_distribution"]
    assert inside["rejected_by_label_check"] == inside["keys"] == 3
    # Without the check, such a key claims clean models it never saw.
    assert inside["held_out_agreement"] > 0.5
    assert inside["held_out_claims"]["verified"] == inside["held_out_claims"]["pairs"]
    honest = smoke_calibration["record"]["label_check_honest"]
    assert honest["keys"] == 10 and honest["rejected"] <= 1


def test_the_store_serves_the_newest_calibration_as_the_null(smoke_calibration):
    record = smoke_calibration["record"]
    store = CalibrationStore(smoke_calibration["db"])
    null = store.null(SMOKE, "backdoor-wm")
    assert null.calibration == record["position"]
    if record["null"]["upper"] > 0.1:
        assert null.p == pytest.approx(record["null"]["upper"])
        assert null.source.startswith("calibrated")
    else:
        assert null.p is None and null.source.startswith("nominal")
    other = store.null(SMOKE, "backdoor-wm-pretrained")
    assert other.p is None and other.calibration is None
    assert "arena calibrate --protocol smoke --defense backdoor-wm-pretrained" in other.source


def test_null_never_lowers_the_schemes_own():
    evidence = Evidence(5, 20, 0.1, 0.01)
    assert Null(0.15, "calibrated").apply(evidence).null_p == 0.15
    assert Null(0.05, "calibrated").apply(evidence).null_p == 0.1
    assert Null(None, "nominal").apply(evidence) == evidence
    raised = Null(0.15, "calibrated").apply(evidence)
    assert raised.p_value == pytest.approx(binomial_p_value(5, 20, 0.15))


def test_a_repeated_calibration_reuses_the_cached_models(smoke_calibration):
    again = calibrate(
        SMOKE,
        models=3,
        held_out=0,
        keys=2,
        db=smoke_calibration["db"],
        cache=smoke_calibration["cache"],
    )
    first = smoke_calibration["record"]["models"]
    # The cache keeps the seconds each model cost to train: the same models, not retrained.
    assert [row["train_seconds"] for row in again["models"]] == [
        row["train_seconds"] for row in first
    ]
    assert again["position"] > smoke_calibration["record"]["position"]
    assert "false_positives" not in again
    assert "| calibration |" in to_markdown(again)


def test_reference_models_load_from_the_cache_and_never_train(smoke_calibration, tmp_path):
    store = CalibrationStore(smoke_calibration["db"])
    models = reference_models(SMOKE, "backdoor-wm", store, smoke_calibration["cache"])
    assert len(models) == 3
    from arena.store import ArtifactCache

    with pytest.raises(ArenaError, match="not in the cache"):
        reference_models(SMOKE, "backdoor-wm", store, ArtifactCache(tmp_path / "empty"))
    with pytest.raises(ArenaError, match="arena calibrate --protocol smoke"):
        reference_models(SMOKE, "backdoor-wm-pretrained", store, smoke_calibration["cache"])


def test_matches_use_the_calibrated_null_and_remeasure_after_a_new_one(smoke_calibration):
    db, cache = smoke_calibration["db"], smoke_calibration["cache"]
    store = ResultStore(db)
    spec = MatchSpec(defense="backdoor-wm", attack="none", protocol="smoke", seed=0)
    first = run_match(spec, store=store, cache=cache)
    current = CalibrationStore(db).null(SMOKE, "backdoor-wm")
    assert first["null"] == dataclasses.asdict(current)
    expected = current.p if current.p is not None else 0.1
    for phase in ("clean", "marked", "attacked"):
        assert first[phase]["evidence"]["null_p"] == pytest.approx(expected)
    assert run_match(spec, store=store, cache=cache)["cached"]["attacked"]  # replayed
    newer = calibrate(SMOKE, models=3, held_out=0, keys=1, db=db, cache=cache)
    again = run_match(spec, store=store, cache=cache)
    assert again["null"]["calibration"] == newer["position"]
    assert all(again["cached"].values())  # re-measured from cached models, none retrained
    assert "replay_seconds" not in again


def test_arena_verify_tests_against_the_calibrated_null(smoke_calibration, tmp_path):
    from arena import ownership
    from arena.ledger import Ledger

    keys = tmp_path / "keys"
    ownership.keygen("backdoor-wm", SMOKE, keys, seed=2)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    model = ownership.mark(
        keys / "mk.json", keys / "vk.json", SMOKE, tmp_path / "m.safetensors", ledger
    )
    calibrations = CalibrationStore(smoke_calibration["db"])
    claim = ownership.verify(
        model, keys / "mk.json", keys / "vk.json", SMOKE, ledger, calibrations=calibrations
    )
    null = calibrations.null(SMOKE, "backdoor-wm")
    assert claim.null == null and claim.to_dict()["calibration"] == null.calibration
    assert claim.evidence.null_p == pytest.approx(null.p if null.p is not None else 0.1)


def test_the_leaderboard_shows_which_null_decided(smoke_calibration):
    from arena.leaderboard import build, to_markdown

    store = ResultStore(smoke_calibration["db"])
    run_match(MatchSpec(protocol="smoke"), store=store, cache=smoke_calibration["cache"])
    board = build(store, SMOKE)
    null = CalibrationStore(smoke_calibration["db"]).null(SMOKE, "backdoor-wm")
    row = next(row for row in board.defenses if row.defense == "backdoor-wm")
    expected = "(calibrated)" if null.p is not None else "(nominal)"
    assert row.null.endswith(expected)
    assert "same key on clean" in to_markdown(board) and "not verified" in row.clean_evidence


def test_white_box_schemes_calibrate_on_the_architecture_they_read(smoke_calibration):
    record = calibrate(
        SMOKE,
        "uchida",
        models=3,
        held_out=0,
        keys=2,
        db=smoke_calibration["db"],
        cache=smoke_calibration["cache"],
    )
    assert {row["architecture"] for row in record["models"]} == {SMOKE.model}
    assert record["null"]["nominal"] == 0.5
    assert 0.35 < record["null"]["rate"] < 0.65  # chance bit agreement, not 0 bits read
