"""Shared fixtures: every test runs against throwaway arena folders, never the user's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from arena.store import ArtifactCache, ResultStore


@pytest.fixture(scope="session", autouse=True)
def arena_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Point ``ARENA_HOME`` and ``ARENA_DATA`` at session folders and restore them after.

    ``ARENA_DATA`` is shared by the whole session so the parsed mnist5k copy is written
    once and read by every later test.
    """
    folders = {
        "ARENA_HOME": tmp_path_factory.mktemp("arena-home"),
        "ARENA_DATA": tmp_path_factory.mktemp("arena-data"),
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
    """A small calibration of ``backdoor-wm`` on ``smoke``: 3 + 2 reference models of two
    architectures, trained once for the session. Returns its database, cache and record."""
    from arena.calibration import calibrate
    from arena.protocols import get_protocol

    root = tmp_path_factory.mktemp("calibration")
    cache = ArtifactCache(root / "cache")
    record = calibrate(
        get_protocol("smoke"),
        "backdoor-wm",
        models=3,
        held_out=2,
        keys=5,
        held_out_keys=10,
        in_distribution_keys=3,
        db=root / "results.sqlite",
        cache=cache,
    )
    return {"db": root / "results.sqlite", "cache": cache, "record": record, "root": root}
