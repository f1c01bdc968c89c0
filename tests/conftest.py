"""Shared fixtures: every test runs against throwaway arena folders, never the user's.

Tests that train a model and assert what the training achieved (a mark verifies, a
backdoor is flagged, a thief agrees with its victim) take their seed from the
``train_seed`` fixture, so their margins can be checked on other seeds than the one CI
runs: ``python -m pytest --train-seed 2`` or ``ARENA_TEST_SEED=2 python -m pytest`` (the
option wins; default 0). A test needing several seeds offsets them from this one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from arena.core.environment import THREADS_VARIABLE
from arena.storage.artifacts import ArtifactCache
from arena.storage.results import ResultStore
from arena.util.files import file_lock

TRAIN_SEED_VARIABLE = "ARENA_TEST_SEED"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--train-seed",
        type=int,
        default=None,
        help=f"seed of tests that assert a training outcome (default ${TRAIN_SEED_VARIABLE} or 0)",
    )


# The files that take longest (processes started, models trained), longest first: with
# one worker per core taking whole files (pytest-xdist's loadfile) in collection order,
# starting these first lets the short files fill in at the end, so the workers finish
# together. An order only: a file missing here runs after them, as before.
LONGEST_FIRST = (
    "test_secrets_are_never_lost.py",
    "test_contracts.py",
    "test_entry_point.py",
    "test_hostile_input.py",
    "test_match.py",
    "test_sweep.py",
    "test_removal_advanced.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept


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


def made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """A folder ``make`` fills once per test session, copied for this worker: the workers
    of a pytest-xdist session share the first one's work instead of repeating it (the
    others wait on a lock), and each still gets a copy of its own to change. When
    ``make`` fails, the workers after the first fail at once with its error."""
    base = tmp_path_factory.getbasetemp()
    copy = tmp_path_factory.mktemp(name)
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing to share
        make(copy)
        return copy
    shared = base.parent / f"made-once-{name}"  # the session's folder, above the workers'
    failed = base.parent / f"made-once-{name}.failed"
    with file_lock(base.parent / f"made-once-{name}.lock"):
        if failed.exists():
            pytest.fail(f"making {name} failed in another worker: {failed.read_text()}")
        if not (shared / ".finished").exists():
            shared.mkdir()
            try:
                make(shared)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}")
                raise
            (shared / ".finished").touch()
    shutil.copytree(shared, copy, dirs_exist_ok=True)
    return copy


@pytest.fixture(autouse=True)
def forgotten_extractions() -> Iterator[None]:
    """No test sees a model ``train_fresh`` kept from another (which may have trained it
    with a stand-in ``train``)."""
    from attacks.removal.common import _EXTRACTIONS

    _EXTRACTIONS.clear()
    yield
    _EXTRACTIONS.clear()


@pytest.fixture(scope="session")
def trained_smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding what a smoke match of ``backdoor-wm`` at seed 0 trains before its
    attack: the clean model, the key and the marked model, made once per session."""
    from arena.eval.match import MatchSpec, run_match

    def make(root: Path) -> None:
        spec = MatchSpec(defense="backdoor-wm", attack="none", protocol="smoke", seed=0)
        run_match(spec, store=ResultStore(root / "r.sqlite"), cache=ArtifactCache(root / "cache"))

    return made_once(tmp_path_factory, "trained-smoke", make) / "cache"


@pytest.fixture
def warm_cache(tmp_path: Path, trained_smoke_cache: Path) -> ArtifactCache:
    """A copy of ``trained_smoke_cache`` of the test's own: for tests of what happens
    after the owner's models exist, which may change or break them."""
    shutil.copytree(trained_smoke_cache, tmp_path / "cache")
    return ArtifactCache(tmp_path / "cache")


@pytest.fixture(scope="session")
def smoke_calibration(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small calibration of ``backdoor-wm`` on ``smoke``: 3 reference models of two
    architectures and 2 foreign ones (one diverged), made once for the session. Returns
    its database, cache and record."""
    from arena.core.protocols import get_protocol
    from arena.eval.calibration import calibrate
    from arena.storage.calibrations import CalibrationStore

    smoke = get_protocol("smoke")

    def make(root: Path) -> None:
        calibrate(
            smoke,
            "backdoor-wm",
            models=3,
            foreign=2,
            keys=5,
            claim_keys=10,
            in_distribution_keys=3,
            db=root / "results.sqlite",
            cache=ArtifactCache(root / "cache"),
        )

    root = made_once(tmp_path_factory, "calibration", make)
    record = CalibrationStore(root / "results.sqlite").latest(smoke, "backdoor-wm")
    cache = ArtifactCache(root / "cache")
    return {"db": root / "results.sqlite", "cache": cache, "record": record, "root": root}
