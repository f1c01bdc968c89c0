"""Shared fixtures: every test runs against throwaway arena folders, never the user's.

Tests that train a model and assert what the training achieved (a mark verifies, a
backdoor is flagged, a thief agrees with its victim) take their seed from the
``train_seed`` fixture, so their margins can be checked on other seeds than the one CI
runs: ``python -m pytest --train-seed 2`` or ``ARENA_TEST_SEED=2 python -m pytest`` (the
option wins; default 0). A test needing several seeds offsets them from this one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from arena.core.environment import THREADS_VARIABLE
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore

TRAIN_SEED_VARIABLE = "ARENA_TEST_SEED"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--train-seed",
        type=int,
        default=None,
        help=f"seed of tests that assert a training outcome (default ${TRAIN_SEED_VARIABLE} or 0)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"train seed: {_train_seed(config)}"


def _train_seed(config: pytest.Config) -> int:
    option = config.getoption("--train-seed")
    if option is not None:
        return option
    variable = os.environ.get(TRAIN_SEED_VARIABLE, "").strip()
    if not variable:
        return 0
    try:
        return int(variable)
    except ValueError:
        raise pytest.UsageError(f"{TRAIN_SEED_VARIABLE}={variable!r} is not an integer") from None


@pytest.fixture(scope="session")
def train_seed(request: pytest.FixtureRequest) -> int:
    """The seed of a test that trains and asserts the outcome (``--train-seed``)."""
    return _train_seed(request.config)


@pytest.fixture(scope="session", autouse=True)
def arena_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Point ``ARENA_HOME`` and ``ARENA_DATA`` at session folders, set ``ARENA_THREADS``
    to 1, and restore them after.

    ``ARENA_DATA`` is shared by the whole session so the parsed mnist5k copy is written
    once and read by every later test.
    """
    folders = {
        "ARENA_HOME": tmp_path_factory.mktemp("arena-home"),
        "ARENA_DATA": tmp_path_factory.mktemp("arena-data"),
        # Commands the tests start train on one thread, like the tests themselves: the
        # workers already share the cores.
        THREADS_VARIABLE: "1",
    }
    saved = {name: os.environ.get(name) for name in folders}
    os.environ.update({name: str(path) for name, path in folders.items()})
    try:
        yield folders
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def single_cpu_thread() -> Iterator[None]:
    """Tiny models train 100x faster on one thread than on threads fighting over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "r.sqlite")


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache")


@pytest.fixture(scope="session")
def smoke_calibration(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small calibration of ``backdoor-wm`` on ``smoke``: 3 reference models of two
    architectures and 2 foreign ones (one diverged), trained once for the session. Returns
    its database, cache and record."""
    from arena.core.protocols import get_protocol
    from arena.eval.calibration import calibrate

    root = tmp_path_factory.mktemp("calibration")
    cache = ArtifactCache(root / "cache")
    record = calibrate(
        get_protocol("smoke"),
        "backdoor-wm",
        models=3,
        foreign=2,
        keys=5,
        claim_keys=10,
        in_distribution_keys=3,
        db=root / "results.sqlite",
        cache=cache,
    )
    return {"db": root / "results.sqlite", "cache": cache, "record": record, "root": root}
