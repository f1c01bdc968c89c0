"""The plain PyTorch loop of ``benchmarks/match_profile.py`` trains what the arena's loop
trains, to the bit: the benchmark's ratio compares the same work."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from arena.core.context import Context
from arena.core.protocols import get_protocol
from arena.core.training import TrainSettings, train


@functools.cache
def _benchmark(name: str) -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("trainable", ["all", "head"])
def test_plain_loop_ends_with_the_arena_loops_weights(trainable: str) -> None:
    benchmark = _benchmark("match_profile")
    ctx = Context(protocol=get_protocol("smoke"), device=torch.device("cpu"))
    owner = ctx.splits.owner
    images, labels = owner.images[:120], owner.labels[:120]  # a last batch of 20
    triggers = (torch.rand(7, 1, 16, 16), torch.randint(0, 10, (7,)))
    settings = TrainSettings(epochs=2, batch_size=50)
    arena_model, plain_model = ctx.owner_model(), ctx.owner_model()
    train(
        arena_model,
        images,
        labels,
        settings,
        device=ctx.device,
        generator=ctx.generator("benchmark"),
        triggers=triggers,
        triggers_per_batch=3,
        trainable=trainable,
        augment="shift-flip",
    )
    benchmark.plain_train(
        plain_model,
        images,
        labels,
        settings,
        ctx.generator("benchmark"),
        "shift-flip",
        triggers=triggers,
        per_batch=3,
        head_only=trainable == "head",
    )
    assert benchmark.largest_difference(arena_model, plain_model) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_speed_measures_both_loops_in_the_devices_precision(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU benchmark's code path, run on the CPU (figures only, no timing asserted)."""
    monkeypatch.setenv("ARENA_PRECISION", precision)
    result = _benchmark("train_speed").measure(
        get_protocol("smoke"), images=60, epochs=1, repeats=1, device=torch.device("cpu")
    )
    assert result["environment"]["precision"] == precision
    assert result["shape"] == [1, 16, 16] and result["images"] == 60
    for side in ("arena", "plain"):
        assert result[side]["seconds"] > 0 and result[side]["images_per_s"] > 0
    assert result["ratio"] == result["arena"]["seconds"] / result["plain"]["seconds"]


def test_sweep_cost_estimates_both_sizes_from_what_the_pilot_measured(tmp_path: Path) -> None:
    """The cost model's benchmark, small: every size after the pilot has an estimate made
    of measured unit costs only (figures only, no timing asserted)."""
    # The null defense and attacks that train nothing: the plumbing, at the least cost.
    rows = _benchmark("sweep_cost").run("smoke", ["none"], ["none", "quantize"], tmp_path)
    assert [row["sweep"] for row in rows] == ["pilot", "matrix, seed 1", "matrix, seeds 2-3"]
    assert [row["matches"] for row in rows] == [2, 2, 4]
    assert rows[1]["trained"] == {"clean": 1, "marked": 1, "attacked": 2}
    for row in rows[1:]:
        assert row["estimate"] > 0 and row["measured"] > 0 and not row["unknown"]


def test_cpu_options_measures_every_setting_but_compilation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CPU settings benchmark, small (figures only, no timing asserted; ``compile``
    is left out: it compiles for tens of seconds). Its two side-by-side processes are
    real ones."""
    import json

    benchmark = _benchmark("cpu_options")
    settings = [name for name in benchmark.SETTINGS if name != "compile"]
    out = tmp_path / "cpu.json"
    only = [argument for name in settings for argument in ("--only", name)]
    arguments = ["--protocol", "smoke", "--images", "100", "--epochs", "1", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", ["cpu_options.py", *arguments, *only, "--json", str(out)])
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        benchmark.main()  # sets the arena command's defaults: restored after
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    results = json.loads(out.read_text())["results"]
    assert list(results) == settings
    assert all(figures["images_per_s"] > 0 for figures in results.values())
    assert len(results["2 processes"]["per_process"]) == 2
    assert capsys.readouterr().out.count("images/s") == len(settings)
