"""The match pipeline on ``smoke``: caching, scoring, and refusing bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest

from arena.core.protocols import get_protocol
from arena.core.stats import Evidence
from arena.core.training import accuracy
from arena.eval.match import MatchSpec, play_match, run_match, score_removal
from arena.util.errors import ArenaError, ArtifactError, KeyTamperedError, UnknownNameError
from tests.record_schema import check_record

SMOKE = get_protocol("smoke")


def _spec(**changes) -> MatchSpec:
    return MatchSpec(**{"defense": "backdoor-wm", "attack": "rtll", "protocol": "smoke", **changes})


def test_rerun_is_a_cache_hit_with_identical_numbers(store, cache):
    first = run_match(_spec(), store=store, cache=cache)
    check_record(first)
    assert not any(first["cached"].values())
    second = run_match(_spec(), store=store, cache=cache)
    assert all(second["cached"].values())
    for part in ("clean", "marked", "attacked"):
        assert second[part] == first[part]
    # One row per match: the re-run replaced it.
    assert len(store.records("smoke")) == 1


def test_the_typed_record_is_what_the_store_keeps_and_a_replay_returns(store, cache):
    first = play_match(_spec(attack="none"), store=store, cache=cache)
    assert store.matches("smoke") == [first] and first.replay_seconds is None
    again = play_match(_spec(attack="none"), store=store, cache=cache)
    assert again.replay_seconds is not None and all(again.cached.values())
    assert dataclasses.replace(again, cached=first.cached, replay_seconds=None) == first


def test_marked_model_is_reused_by_every_attack(store, warm_cache):
    run_match(_spec(attack="none"), store=store, cache=warm_cache)
    record = run_match(_spec(attack="ftll"), store=store, cache=warm_cache)
    assert record["cached"] == {"clean": True, "key": True, "marked": True, "attacked": False}
    assert len(list((warm_cache.root / "marked").rglob("model.safetensors"))) == 1


def test_the_owners_models_are_measured_once_for_every_attack(store, warm_cache, monkeypatch):
    """A sweep plays every attack against the same clean and marked model: their test
    accuracies are computed once, and the second match records the same numbers."""
    from arena.eval import match

    measured = []

    def counting_accuracy(model, *args, **kwargs):
        measured.append(model)
        return accuracy(model, *args, **kwargs)

    monkeypatch.setattr(match, "_OWNER_MEASURES", match.OrderedDict())
    monkeypatch.setattr(match, "accuracy", counting_accuracy)
    first = run_match(_spec(attack="none"), store=store, cache=warm_cache)
    assert len(measured) == 3  # clean, marked, attacked
    second = run_match(_spec(attack="quantize"), store=store, cache=warm_cache)
    assert len(measured) == 4  # the attacked model only
    for name in ("clean", "marked"):
        assert second[name] == first[name]
    other_seed = run_match(_spec(attack="none", seed=1), store=store, cache=warm_cache)
    assert len(measured) == 7  # other models: measured
    assert other_seed["clean"] != first["clean"]


def test_replaced_head_reports_owner_head_evidence(store, warm_cache):
    record = run_match(_spec(attack="rtll"), store=store, cache=warm_cache)
    owner_head = record["attacked"]["owner_head_evidence"]
    # RTLL trains only the new head: the owner's head on the unchanged body answers exactly
    # as the marked model did.
    assert owner_head == record["marked"]["evidence"]
    assert (
        run_match(_spec(attack="ftll"), store=store, cache=warm_cache)["attacked"][
            "owner_head_evidence"
        ]
        is None
    )


def test_corrupt_cached_model_is_refused_not_used(store, warm_cache):
    run_match(_spec(attack="none"), store=store, cache=warm_cache)
    (model_file,) = (warm_cache.root / "marked").rglob("model.safetensors")
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        run_match(_spec(attack="none"), store=store, cache=warm_cache)
    assert model_file.exists()  # nothing deleted behind the user's back


def test_tampered_verification_key_is_refused(store, warm_cache):
    run_match(_spec(attack="none"), store=store, cache=warm_cache)
    (vk_file,) = (warm_cache.root / "key").rglob("vk.json")
    record = json.loads(vk_file.read_text())
    digest = record["commitments"][3]["label"]
    record["commitments"][3]["label"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    vk_file.write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match="trigger 3"):
        run_match(_spec(attack="none"), store=store, cache=warm_cache)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"defense": "backdor-wm"}, UnknownNameError, "did you mean 'backdoor-wm'"),
        ({"attack": "rtla"}, UnknownNameError, "did you mean 'rtal'"),
        ({"protocol": "mnist"}, UnknownNameError, "unknown protocol"),
        ({"attack_params": {"lr": "fast"}}, ArenaError, "lr"),
        ({"attack_params": {"epoch": "3"}}, UnknownNameError, "did you mean 'epochs'"),
        ({"defense_params": {"trigger_size": "0"}}, ArenaError, "trigger_size"),
        ({"model": "resnet_18"}, UnknownNameError, "timm model"),
    ],
)
def test_bad_input_fails_before_any_training(store, cache, changes, error, message):
    with pytest.raises(error, match=message):
        run_match(_spec(**changes), store=store, cache=cache)
    assert not (cache.root / "clean").exists()
    assert store.records() == []


def _evidence(successes: int) -> Evidence:
    return Evidence(successes, 100, 0.1, 1e-3)


@pytest.mark.parametrize(
    "marked, attacked_acc, attacked, succeeded",
    [
        (_evidence(98), 0.97, _evidence(90), False),  # mark survives
        (_evidence(98), 0.97, _evidence(12), True),  # mark gone, accuracy kept
        (_evidence(98), 0.90, _evidence(12), False),  # mark gone with the model: no win
        (_evidence(11), 0.98, _evidence(10), False),  # nothing was there to remove
    ],
)
def test_score_removal(marked, attacked_acc, attacked, succeeded):
    outcome = score_removal(SMOKE, 0.98, marked, attacked_acc, attacked)
    assert outcome.succeeded is succeeded
    assert outcome.reason


def test_any_timm_model_by_name(store, cache):
    record = run_match(_spec(attack="rtll", model="test_vit"), store=store, cache=cache)
    check_record(record)
    assert record["model"] == "test_vit"
    assert record["attacked"]["owner_head_evidence"] is not None


def test_an_interrupted_match_keeps_what_finished_and_resumes(store, cache, monkeypatch):
    from attacks.removal.fine_tune import FineTuneAttack

    def interrupted(self, model, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(FineTuneAttack, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_match(_spec(attack="ftal"), store=store, cache=cache)
    assert store.records() == []
    assert not (cache.root / "attacked").exists() or not list(
        (cache.root / "attacked").rglob("meta.json")
    )
    monkeypatch.undo()
    record = run_match(_spec(attack="ftal"), store=store, cache=cache)
    assert record["cached"] == {"key": True, "clean": True, "marked": True, "attacked": False}
