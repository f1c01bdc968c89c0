"""Aggregation rules of the leaderboard, on records written straight into a store."""

from __future__ import annotations

import pytest

from arena.core.protocols import get_protocol
from arena.core.registry import attacks, defenses
from arena.eval.leaderboard import build, labelled
from arena.report.leaderboard import to_markdown
from arena.storage.results import ResultStore
from tests.record_schema import sample_record

SMOKE = get_protocol("smoke")


def _record(seed: int, attacked_successes: int, *, attack_params=None, defense_params=None):
    return sample_record(
        seed, attacked_successes, attack_params=attack_params, defense_params=defense_params
    )


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
    first_seed = row.attacked_evidence.successes
    assert (first_seed, row.attacked_verified, row.attack_succeeded) == (15, 2, 0)
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
