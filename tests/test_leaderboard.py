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


def _seeds(store, defense: str, attack: str, successes: list[int]) -> None:
    """``defense`` x ``attack`` on seeds 0, 1, ...: the attacked evidence of each seed
    (15 of 20 and more is verified: the attack failed; fewer: it succeeded)."""
    import dataclasses

    for seed, count in enumerate(successes):
        record = dataclasses.replace(sample_record(seed, count, attack=attack), defense=defense)
        store.save(f"{defense}-{attack}-{seed}", record)


def test_a_cell_aggregates_its_seeds_with_intervals_and_flags_a_flip(store):
    _seeds(store, "backdoor-wm", "ftal", [20, 3, 18, 2, 19])
    (row,) = build(store, SMOKE).matches
    assert row.seeds == [0, 1, 2, 3, 4]
    assert row.attacked_per_seed == [(0, 20, 20), (1, 3, 20), (2, 18, 20), (3, 2, 20), (4, 19, 20)]
    assert row.attack_succeeded == 2 and row.flips
    low, high = row.succeeded_ci95
    assert 0.05 < low < 0.06 and 0.85 < high < 0.86  # Clopper-Pearson of 2 of 5
    # Every seed's accuracy is the same here: a t-interval of zero width.
    assert row.marked_acc_ci95 == pytest.approx((0.9, 0.9))
    markdown = to_markdown(build(store, SMOKE))
    assert "2/5 seeds (CI95 5-85%), flips" in markdown
    assert "s0 20/20, s1 3/20, s2 18/20, s3 2/20, s4 19/20" in markdown
    assert "Seeds: 5 per cell" in markdown


def test_one_seed_gives_no_accuracy_interval_and_no_flip(store):
    _seeds(store, "backdoor-wm", "ftal", [3])
    (row,) = build(store, SMOKE).matches
    assert row.clean_acc_ci95 is None and not row.flips and row.attack_succeeded == 1


def test_defenses_rank_by_their_worst_case_and_tie_where_the_seeds_cannot_separate(store):
    # Six seeds: content's strongest attack won 6 of 6 (CI95 54-100%), uchida's and
    # noise's none (0-46%): two ranks. uchida and noise tie; uchida survived more attacks.
    _seeds(store, "content", "ftal", [2, 1, 3, 2, 0, 4])
    _seeds(store, "content", "rtal", [20] * 6)
    _seeds(store, "uchida", "ftal", [20, 19, 20, 18, 20, 20])
    _seeds(store, "uchida", "rtal", [20] * 6)
    _seeds(store, "noise", "ftal", [20] * 6)
    board = build(store, SMOKE)
    ranked = [(row.defense, row.rank, row.tied) for row in board.defenses]
    assert ranked == [("uchida", 1, True), ("noise", 1, True), ("content", 3, False)]
    worst = {row.defense: row.worst for row in board.defenses}
    assert (worst["content"].attack, worst["content"].lost) == ("ftal", 6)
    assert (worst["noise"].lost, worst["noise"].seeds) == (0, 6)
    markdown = to_markdown(board)
    assert "| 1= | uchida |" in markdown and "| 3 | content |" in markdown
    assert "ftal: 6/6 seeds lost (CI95 54-100%)" in markdown
    assert board.to_dict()["defenses"][2]["worst"]["seeds"] == 6


def test_five_seeds_cannot_separate_none_of_five_from_five_of_five(store):
    # 95% Clopper-Pearson: 0/5 reaches 52%, 5/5 starts at 48%: the intervals overlap.
    _seeds(store, "content", "ftal", [2] * 5)
    _seeds(store, "uchida", "ftal", [20] * 5)
    ranks = [(row.defense, row.rank, row.tied) for row in build(store, SMOKE).defenses]
    assert ranks == [("uchida", 1, True), ("content", 1, True)]


def test_with_one_seed_every_defense_ties(store):
    _seeds(store, "content", "ftal", [2])
    _seeds(store, "uchida", "ftal", [20])
    ranks = [(row.rank, row.tied) for row in build(store, SMOKE).defenses]
    assert ranks == [(1, True), (1, True)]  # 0/1 and 1/1: intervals 0-97.5% and 2.5-100%


def test_a_mark_that_never_verified_loses_every_seed_and_ranks_below_one_that_survived(store):
    import dataclasses

    from tests.record_schema import evidence_record

    _seeds(store, "uchida", "ftal", [20] * 6)  # verified, and survived every seed
    for seed in range(6):  # content: never verified, so the attack "failed" to remove it
        record = sample_record(seed, 2)
        unmarked = dataclasses.replace(record.marked, evidence=evidence_record(2))
        record = dataclasses.replace(
            record, defense="content", marked=unmarked, attack_succeeded=False
        )
        store.save(f"content-{seed}", record)
    # none: run against the null attack only, so no attack decided anything.
    for seed in range(6):
        none = dataclasses.replace(sample_record(seed, 20, attack="none"), threat="none")
        store.save(f"none-{seed}", dataclasses.replace(none, defense="none"))
    board = build(store, SMOKE)
    ranked = [(row.defense, row.rank, row.tied) for row in board.defenses]
    assert ranked == [("uchida", 1, False), ("content", 2, False), ("none", 3, False)]
    worst = {row.defense: row.worst for row in board.defenses}
    assert worst["content"].lost == 6 and worst["uchida"].lost == 0 and worst["none"] is None
    assert "| 3 | none |" in to_markdown(board) and "none run" in to_markdown(board)


def test_the_versions_line_names_what_differs_and_on_which_seeds(store):
    import dataclasses

    for seed in range(4):
        record = sample_record(seed, 3)
        threads = 2 if seed == 0 else 1
        environment = {**record.versions.environment, "threads": threads}
        versions = dataclasses.replace(record.versions, environment=environment)
        store.save(f"s{seed}", dataclasses.replace(record, versions=versions))
    markdown = to_markdown(build(store, SMOKE))
    assert (
        "Versions of the matches shown: torch 2.0; differing between matches: "
        "threads 1 (3 matches, seeds 1-3) or 2 (1 match, seed 0)."
    ) in markdown


def test_pairs_not_played_are_listed_with_their_reason():
    from arena.eval.leaderboard import _not_played

    rows = _not_played({"dawn", "backdoor-wm", "uchida"}, {"ftal", "distill", "forge-universal"})
    assert [(row.defense, row.attacks) for row in rows] == [
        ("dawn", ["forge-universal", "ftal"]),
        ("uchida", ["forge-universal"]),
    ]
    assert "outside its threat model" in rows[0].reason
    assert "bit strings of a white-box scheme" in rows[1].reason
