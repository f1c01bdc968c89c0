"""``arena sweep`` on ``smoke``: the matrix, skipping finished matches, resuming."""

from __future__ import annotations

import pytest

from arena.core.protocols import get_protocol
from arena.core.registry import attacks, defenses
from arena.eval import cost
from arena.eval import sweep as sweeping
from arena.storage import results as results_module
from arena.storage.artifacts import ArtifactCache
from arena.storage.calibrations import CalibrationStore
from arena.storage.results import ResultStore
from arena.util.errors import ArenaError, UnknownNameError
from tests.cli_runner import run_arena


def test_plan_expands_all_and_orders_by_defense():
    specs = sweeping.plan("smoke", ["none", "backdoor-wm"], ["all"], [0, 1])
    # Every attack that applies to these black-box trigger-set schemes (adaptive-subspace
    # is for white-box ones).
    names = [
        a for a in attacks.names() if attacks.get(a)().applies_to(defenses.get("none")()) is None
    ]
    assert len(names) == len(attacks.names()) - 1
    assert len(specs) == 2 * 2 * len(names)
    assert [(s.defense, s.attack) for s in specs[: len(names)]] == [("none", a) for a in names]
    assert {s.seed for s in specs[: 2 * len(names)]} == {0}
    with pytest.raises(UnknownNameError, match="did you mean 'rtal'"):
        sweeping.plan("smoke", ["backdoor-wm"], ["rtla"], [0])


def test_one_mark_per_defense_and_seed_and_a_rerun_trains_nothing(tmp_path):
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    specs = sweeping.plan("smoke", ["none", "backdoor-wm"], ["none", "ftll", "rtll"], [0])
    first = sweeping.sweep(specs, store=store, cache=cache)
    assert (first.run, first.replayed, first.failed) == (6, 0, [])
    assert first.trained == {"clean": 1, "marked": 2, "attacked": 6}
    again = sweeping.sweep(specs, store=store, cache=cache)
    assert (again.run, again.replayed) == (0, 6) and not again.trained
    assert len(store.records("smoke")) == 6


def test_an_interrupted_sweep_resumes_and_a_failed_match_does_not_stop_it(tmp_path, monkeypatch):
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    specs = sweeping.plan("smoke", ["backdoor-wm"], ["none", "ftll", "ftal"], [0])

    def interrupt_after_first(index, spec, record, note):
        if index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweeping.sweep(specs, store=store, cache=cache, on_match=interrupt_after_first)
    assert len(store.records("smoke")) == 1  # the finished match is kept

    real = sweeping.play_unsaved

    def failing(spec, **kwargs):
        if spec.attack == "ftll":
            raise ArenaError("the plugin broke")
        return real(spec, **kwargs)

    monkeypatch.setattr(sweeping, "play_unsaved", failing)
    resumed = sweeping.sweep(specs, store=store, cache=cache)
    assert (resumed.replayed, resumed.run) == (1, 1)
    assert [(s.attack, e) for s, e in resumed.failed] == [("ftll", "the plugin broke")]
    assert resumed.trained == {"attacked": 1}  # clean and marked came from the cache


def test_cli_sweep_logs_every_match(tmp_path):
    args = ["sweep", "--protocol", "smoke", "--defense", "backdoor-wm", "--attack", "none"]
    result = run_arena(*args, "--attack", "ftll", home=tmp_path, process=True)
    assert result.returncode == 0, result.stderr
    assert "[2/2] backdoor-wm x ftll, seed 0" in result.stderr
    assert "2 matches: 2 run, 0 already finished, 0 failed" in result.stdout
    assert "1 clean" in result.stdout and "1 marked" in result.stdout
    bad = run_arena("sweep", "--protocol", "smoke", "--attack", "rtla", home=tmp_path)
    assert bad.returncode == 2 and "did you mean 'rtal'" in bad.stderr
    # --estimate says what a bigger sweep would cost, from what this one measured, and
    # runs nothing.
    more = run_arena(*args, "--attack", "ftll", "--seed", "1", "--estimate", home=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "estimate: 2 matches to run, 1 clean and 1 marked models to train" in more.stdout
    assert "unit costs on this machine: clean" in more.stdout and not more.stderr


def test_an_estimate_with_nothing_measured_gives_no_figure():
    blind = cost.Estimate(matches=3, cleans=1, marks=1, unknown=["attack rtal", "the clean model"])
    assert blind.describe().endswith(
        "train: unknown, no stored match of the protocol has measured its parts"
    )
    partial = cost.Estimate(seconds=90.0, matches=3, cleans=1, marks=1, unknown=["attack rtal"])
    assert "1.5 min, not counting attack rtal (no stored match" in partial.describe()
    assert cost.Estimate(seconds=90.0, matches=3).describe().endswith("train: 1.5 min")


def test_an_attack_that_reused_anothers_model_is_costed_as_if_it_trained_it(warm_cache, tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    specs = sweeping.plan("smoke", ["backdoor-wm"], ["evade-ensemble", "retrain"], [0])
    sweeping.sweep(specs, store=store, cache=warm_cache)
    ensemble, retrain = sorted(store.matches("smoke"), key=lambda record: record.attack)
    # The sweep plays evade-ensemble first: retrain gets its first member's model back.
    reused = retrain.attack_info["reused_seconds"]
    assert "reused_seconds" not in ensemble.attack_info and reused > 0
    costs = cost.unit_costs([retrain])
    assert costs.attack["retrain"] == pytest.approx(retrain.seconds["attack"] + reused)


def test_the_cost_model_counts_each_model_once_and_a_finished_match_as_free(tmp_path):
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    defenses, some_attacks = ["backdoor-wm", "uchida"], ["none", "ftll"]
    specs = sweeping.plan("smoke", defenses, some_attacks, [0])
    sweeping.sweep(specs, store=store, cache=cache)
    costs, again = sweeping.estimate_sweep(specs, store)
    assert (again.matches, again.cleans, again.marks, again.seconds) == (0, 0, 0, 0.0)
    assert costs.matches == 4 and set(costs.mark) == set(defenses)
    assert set(costs.attack) == set(some_attacks) and costs.clean > 0 and costs.match > 0
    _, bigger = sweeping.estimate_sweep(
        sweeping.plan("smoke", defenses, some_attacks, [0, 1, 2]), store
    )
    assert (bigger.matches, bigger.cleans, bigger.marks, bigger.unknown) == (8, 2, 4, [])
    per_seed = (
        costs.clean
        + sum(costs.mark.values())
        + len(defenses) * sum(costs.attack.values())
        + len(defenses) * len(some_attacks) * costs.match
    )
    assert bigger.seconds == pytest.approx(2 * per_seed)
    _, unmeasured = sweeping.estimate_sweep(sweeping.plan("smoke", ["none"], ["rtal"], [0]), store)
    assert unmeasured.unknown == ["attack rtal", "marking none"]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--executor", "dask"], "unknown executor 'dask'; choose local or ray"),
        (["--address", "auto"], "--address and --workers are options of --executor ray"),
        (["--executor", "ray", "--workers", "0"], "workers must be >= 1, got 0"),
    ],
)
def test_sweep_refuses_a_bad_executor_before_any_training(
    tmp_path, options: list[str], says: str
) -> None:
    result = run_arena("sweep", "--protocol", "smoke", *options, home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {says}"
    assert not (tmp_path / "cache").exists()


def test_the_ray_executor_without_ray_says_how_to_get_it(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(ArenaError, match=r"pip install 'watermark-arena\[ray\]'"):
        sweeping.RaySweep()


def test_the_task_graph_trains_each_clean_and_marked_model_in_one_match_first() -> None:
    specs = sweeping.plan("smoke", ["backdoor-wm", "uchida"], ["none", "ftal", "rtal"], [0, 1])
    graph = sweeping.task_graph(specs)
    first = {(s.defense, s.seed): i for i, s in reversed(list(enumerate(specs)))}
    for index, spec in enumerate(specs):
        mark = first[(spec.defense, spec.seed)]
        seed_first = first[("backdoor-wm", spec.seed)]
        if index == seed_first:
            assert graph[index] == ()  # trains the seed's clean model
        elif index == mark:
            assert graph[index] == (seed_first,)  # marks, once the clean model exists
        else:
            assert graph[index] == (mark,)  # loads the marked model
        assert all(before < index for before in graph[index])


def test_a_sweep_that_discards_attacked_models_still_resumes_and_plays_again_when_asked(
    tmp_path,
):
    from arena.eval.match import play_match

    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    specs = sweeping.plan("smoke", ["backdoor-wm"], ["none", "ftll"], [0])
    first = sweeping.sweep(specs, store=store, cache=cache, discard_attacked=True)
    assert first.trained == {"clean": 1, "marked": 1, "attacked": 2}
    attacked = sorted((tmp_path / "cache" / "attacked").glob("*/*/meta.json"))
    assert len(attacked) == 2
    for meta in attacked:
        assert not (meta.parent / "model.safetensors").exists()
        assert '"discarded": true' in meta.read_text()
    # The stored matches still count as finished: nothing is played again.
    again = sweeping.sweep(specs, store=store, cache=cache, discard_attacked=True)
    assert (again.replayed, again.run) == (2, 0) and not again.trained
    # Without its record (here: another database), the match plays its attack again.
    record = play_match(specs[1], store=ResultStore(tmp_path / "other.sqlite"), cache=cache)
    assert record.cached == {"key": True, "clean": True, "marked": True, "attacked": False}
    kept = [meta.parent / "model.safetensors" for meta in attacked]
    assert sum(path.exists() for path in kept) == 1


def test_a_parameter_variant_of_a_defense_is_marked_by_its_own_first_match() -> None:
    from arena.eval.match import MatchSpec

    def spec(attack: str, seed: int = 0, **params) -> MatchSpec:
        return MatchSpec(
            defense="deepsigns", attack=attack, protocol="smoke", seed=seed, defense_params=params
        )

    specs = [
        spec("none"),
        spec("ftal"),
        spec("none", center_strength=0.0),  # another marked model: marks after the clean one
        spec("ftal", center_strength=0.0),
        spec("none", seed=1),  # another seed: its own clean model
        spec("ftal", seed=1),
    ]
    assert sweeping.task_graph(specs) == [(), (0,), (0,), (2,), (), (4,)]


def test_a_worker_plays_from_snapshots_and_never_opens_the_database(tmp_path, monkeypatch):
    """What a Ray worker runs (``play_task``), in this process: the driver's snapshots of
    the stored matches and calibrations are all it reads, so no database is opened or
    made, not even the default one under ARENA_HOME."""
    store, cache = ResultStore(tmp_path / "r.sqlite"), ArtifactCache(tmp_path / "cache")
    (spec,) = sweeping.plan("smoke", ["backdoor-wm"], ["ftll"], [0])
    protocol = get_protocol("smoke")
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "worker-home"))
    opened: list[str] = []
    real_connect = results_module.connect

    def watched(path, *args, **kwargs):
        opened.append(str(path))
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(results_module, "connect", watched)
    calibrations = CalibrationStore(store.path).snapshot([(protocol, "backdoor-wm", None)])
    stored = store.snapshot(["smoke"])
    opened.clear()
    played = sweeping.play_task(spec, stored, calibrations, str(cache.root))
    assert played.error is None and not played.replayed
    assert opened == [] and not (tmp_path / "worker-home").exists()
    store.save(played.match_id, played.record)  # the driver's part
    stored = store.snapshot(["smoke"])
    opened.clear()
    again = sweeping.play_task(spec, stored, calibrations, str(cache.root))
    assert again.replayed and again.match_id == played.match_id and opened == []
