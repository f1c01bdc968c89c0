"""Removal cost: attacks declare a budget grid, ``arena sweep --budget-curve`` plays it,
and the leaderboard reports the cheapest budget that removes each mark and its cost."""

from __future__ import annotations

import json

import pytest

from arena.core.plugin import Budget
from arena.core.protocols import get_protocol
from arena.core.registry import attacks
from arena.eval import sweep as sweeping
from arena.eval.leaderboard import build
from arena.report.leaderboard import to_markdown
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")
BUDGETED = [name for name in attacks.names() if attacks.get(name).budget_curve is not None]


def test_the_budgeted_attacks_are_the_catalogs_removal_and_filter_attacks():
    assert {"ftal", "rtal", "prune", "fine-prune", "quantize", "distill", "jpeg"} <= set(BUDGETED)
    assert attacks.get("piracy").budget_curve is None  # a claim has no budget to vary


@pytest.mark.parametrize("name", BUDGETED)
def test_every_declared_grid_is_a_parameter_the_attack_accepts_at_every_value(name):
    attack = attacks.get(name)
    budget = attack.budget_curve
    assert budget.parameter in attack().params_dict()
    for value in budget.grid:
        assert attack({budget.parameter: value}).params_dict()[budget.parameter] == value


def test_a_grid_needs_distinct_values():
    with pytest.raises(ArenaError, match="distinct values"):
        Budget("epochs", (1, 1, 2))
    with pytest.raises(ArenaError, match="distinct values"):
        Budget("epochs", ())


def test_the_plan_plays_every_budget_of_the_grid_and_unbudgeted_attacks_once():
    specs = sweeping.plan("smoke", ["backdoor-wm"], ["quantize", "piracy"], [0], budget_curve=True)
    grid = attacks.get("quantize").budget_curve.grid
    assert [dict(s.attack_params) for s in specs if s.attack == "quantize"] == [
        {"bits": bits} for bits in grid
    ]
    assert [dict(s.attack_params) for s in specs if s.attack == "piracy"] == [{}]
    plain = sweeping.plan("smoke", ["backdoor-wm"], ["quantize"], [0])
    assert [dict(s.attack_params) for s in plain] == [{}]
    # One marked model serves every budget.
    graph = sweeping.task_graph(specs)
    assert graph[0] == () and all(waits == (0,) for waits in graph[1:])


def test_the_board_reports_the_cheapest_budget_that_removes_the_mark(tmp_path, train_seed):
    """Quantizing smoke's marked model to 8 bits leaves backdoor-wm's mark (20/20 on
    seeds 0-2), 2 bits removes it on each (and most of the accuracy with it)."""
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    specs = sweeping.plan(
        "smoke", ["backdoor-wm"], ["quantize", "ftll"], [train_seed], budget_curve=True
    )
    specs += sweeping.plan("smoke", ["backdoor-wm"], ["ftll"], [train_seed])
    # A variant that moves another parameter is a cell of its own, not a curve point.
    specs += [
        sweeping.MatchSpec(
            "backdoor-wm", "quantize", "smoke", train_seed, attack_params={"bits": 8, "epochs": 1}
        )
    ]
    report = sweeping.sweep(specs, store=store, cache=cache)
    assert report.failed == []
    board = build(store, SMOKE)
    quantize = next(row for row in board.removal_costs if row.attack == "quantize")
    assert [point.value for point in quantize.points] == list(quantize_grid())
    by_bits = {point.value: point for point in quantize.points}
    assert by_bits[8].removed == 0 and by_bits[2].removed == 1
    assert quantize.cheapest in quantize_grid()[1:]
    cheapest = by_bits[quantize.cheapest]
    assert quantize.cheapest_acc_cost == cheapest.acc_cost > 0.2  # the model went with it
    assert all(by_bits[bits].removed == 0 for bits in quantize_grid() if bits > quantize.cheapest)
    # Cells: the attacks at their defaults (quantize's 4 bits is also a curve point),
    # and the other variant; never a row per budget.
    cells = {row.attack for row in board.matches}
    assert cells == {"quantize", "ftll", "quantize [bits=8, epochs=1]"}
    text = to_markdown(board)
    section = text.split("## Removal cost")[1]
    assert f"| backdoor-wm | quantize | bits | bits={quantize.cheapest} |" in section
    assert "8: 0/1" in section and "2: 1/1" in section
    data = json.loads(json.dumps(board.to_dict()))
    assert {row["attack"] for row in data["removal_costs"]} == {"quantize", "ftll"}


def quantize_grid() -> tuple[int, ...]:
    return attacks.get("quantize").budget_curve.grid


def test_the_cli_sweeps_a_curve_and_names_each_budget(tmp_path):
    result = run_arena(
        "sweep", "--protocol", "smoke", "--defense", "none", "--attack", "jpeg",
        "--budget-curve", home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    grid = attacks.get("jpeg").budget_curve.grid
    assert f"{len(grid)} matches: {len(grid)} run" in result.stdout
    for quality in grid:
        assert f"none x jpeg [quality={quality}], seed 0" in result.stderr
