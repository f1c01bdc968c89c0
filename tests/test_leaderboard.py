"""Aggregation rules of the leaderboard, on records written straight into a store."""

from __future__ import annotations

import pytest

from arena.leaderboard import build, labelled, to_markdown
from arena.protocols import get_protocol
from arena.registry import attacks, defenses
from arena.store import ResultStore

SMOKE = get_protocol("smoke")


def _evidence(successes: int, verified: bool) -> dict:
    return {
        "successes": successes,
        "trials": 20,
        "null_p": 0.1,
        "p_value": 1e-9 if verified else 0.5,
        "verified": verified,
        "alpha": 0.001,
        "required_successes": 8,
    }


def _record(seed: int, attacked_successes: int, *, attack_params=None, defense_params=None):
    verified = attacked_successes >= 8
    return {
        "protocol": SMOKE.name,
        "protocol_version": SMOKE.version,
        "model": SMOKE.model,
        "defense": "backdoor-wm",
        "attack": "ftal",
        "seed": seed,
        "defense_params": defense_params or {},
        "attack_params": attack_params or {},
        "threat": "removal",
        "threat_model": {},
        "versions": {},
        "defense_access": "black-box",
        "clean": {"test_acc": 0.9, "evidence": _evidence(2, False)},
        "marked": {"test_acc": 0.9, "evidence": _evidence(20, True)},
        "attacked": {
            "test_acc": 0.88,
            "evidence": _evidence(attacked_successes, verified),
            "owner_head_evidence": None,
        },
        "attack_succeeded": not verified,
        "seconds": {"attack": 1.0},
        "outcome": "",
    }


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "results.sqlite")


def test_a_later_run_of_the_same_seed_supersedes_the_earlier(store):
    store.save("old", _record(0, 3))  # an earlier run, e.g. before a plugin fix
    store.save("new", _record(0, 15))
    store.save("other-seed", _record(1, 12))
    board = build(store, SMOKE)
    (row,) = board.matches
    assert row.seeds == [0, 1]
    assert (row.attacked_successes, row.attacked_verified, row.attack_succeeded) == ("15/20", 2, 0)
    assert board.superseded == 1
    assert "1 records superseded" in to_markdown(board)


def test_a_parameter_variant_is_its_own_row_and_defaults_are_not_a_variant(store):
    default_lr = attacks.get("ftal")().params_dict()["lr"]
    store.save("default", _record(0, 15, attack_params={"lr": default_lr}))
    store.save("stronger", _record(0, 2, attack_params={"lr": 0.5}))
    rows = {row.attack: row for row in build(store, SMOKE).matches}
    assert set(rows) == {"ftal", "ftal [lr=0.5]"}
    assert rows["ftal [lr=0.5]"].attack_succeeded == 1
    assert rows["ftal"].attack_succeeded == 0


def test_labels_ignore_unset_and_undeclared_parameters():
    # A parameter the plugin no longer declares (a record from before a rename) or left
    # at None does not split a row; a plugin that is gone shows every set parameter.
    assert labelled(defenses, "backdoor-wm", {"retired": 3, "trigger_size": None}) == "backdoor-wm"
    assert labelled(defenses, "gone-scheme", {"strength": 2, "unset": None}) == (
        "gone-scheme [strength=2]"
    )
