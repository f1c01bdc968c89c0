"""The cifar10 protocol's data path and the seed paper's tables, offline, on fixture files in
the formats torchvision reads (tests/data_fixtures.py): CIFAR-10's python batches and
STL-10's binary files, read by the same loader, split and input-size code as the real ones.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from arena.core.data import load_raw, load_splits, load_stl10
from arena.core.protocols import get_protocol
from arena.util.errors import ArenaError
from tests.cli_runner import run_arena
from tests.data_fixtures import (
    balanced_labels,
    class_images,
    read_cifar10_labels,
    write_cifar10,
    write_stl10,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = get_protocol("cifar10-fixture")
CIFAR10 = get_protocol("cifar10")


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with a 500-image CIFAR-10 and a 400-image STL-10."""
    root = tmp_path_factory.mktemp("fixture-data")
    write_cifar10(root)
    write_stl10(root)
    return root


@pytest.fixture(scope="module")
def fixture_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One arena home for the whole matches of this file: a model one test trained is a
    cache hit for the next (speed only; each test also passes alone)."""
    return tmp_path_factory.mktemp("fixture-home")


@pytest.fixture
def use_data(monkeypatch: pytest.MonkeyPatch):
    def point_at(root: Path) -> Path:
        monkeypatch.setenv("ARENA_DATA", str(root))
        return root

    return point_at


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def nothing_trained(home: Path) -> bool:
    cache = home / "cache"
    return not cache.exists() or not any(path.is_file() for path in cache.rglob("*"))


# The loaders read the files as torchvision does.


def test_cifar10_fixture_is_read_as_written(fixture_data: Path, use_data) -> None:
    use_data(fixture_data)
    images, labels = load_raw("cifar10")
    folder = fixture_data / "cifar-10-batches-py"
    assert images.shape == (500, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.array_equal(labels, read_cifar10_labels(folder))
    with open(folder / "data_batch_2", "rb") as file:
        batch = pickle.load(file)
    assert np.array_equal(images[80:160], batch["data"].reshape(80, 3, 32, 32))
    with open(folder / "test_batch", "rb") as file:
        test_batch = pickle.load(file)
    assert np.array_equal(images[400:], test_batch["data"].reshape(100, 3, 32, 32))
    assert not (fixture_data / "cifar10.npz").exists()  # read from the files every time


def test_stl10_fixture_is_read_column_major_with_labels_from_zero(fixture_data: Path) -> None:
    (train_images, train_labels), (test_images, test_labels) = load_stl10(fixture_data)
    # The writer's images, as (N, C, H, W): a transposed read would not match.
    expected_labels = balanced_labels(200, 10)
    assert np.array_equal(train_labels, expected_labels)
    assert np.array_equal(train_images, class_images(expected_labels, 96, 20))
    assert train_images.shape == test_images.shape == (200, 3, 96, 96)
    assert set(test_labels.tolist()) == set(range(10))
    # The images are not symmetric: reading rows as columns would have been caught.
    assert not np.array_equal(train_images, train_images.transpose(0, 1, 3, 2))


def test_fixture_protocol_is_cifar10_at_fixture_scale() -> None:
    same = ("dataset", "image_size", "channels", "num_classes", "augment", "split_seed")
    for name in same:
        assert getattr(FIXTURE, name) == getattr(CIFAR10, name), name
    assert FIXTURE.owner_size + FIXTURE.attacker_size + FIXTURE.test_size == 500
    assert FIXTURE.fingerprint != CIFAR10.fingerprint


def test_cifar10_fixture_splits(fixture_data: Path, use_data) -> None:
    use_data(fixture_data)
    splits = load_splits(FIXTURE)
    images, labels = load_raw("cifar10")
    order = np.random.default_rng(FIXTURE.split_seed).permutation(500)
    sizes = (FIXTURE.owner_size, FIXTURE.attacker_size, FIXTURE.test_size)
    start = 0
    for split, size in zip((splits.owner, splits.attacker, splits.test), sizes):
        index = order[start : start + size]
        start += size
        assert split.images.shape == (size, 3, 32, 32) and split.images.dtype == torch.float32
        assert torch.equal(split.images, torch.as_tensor(images[index]).float() / 255)
        assert torch.equal(split.labels, torch.as_tensor(labels[index]))
    assert start == 500


def test_the_split_follows_the_data_folder(fixture_data: Path, use_data, tmp_path: Path) -> None:
    """Two data folders in one process: each read from its own files, none from a cache."""
    use_data(fixture_data)
    first = load_splits(FIXTURE)
    write_cifar10(tmp_path, seed=7)
    use_data(tmp_path)
    second = load_splits(FIXTURE)
    assert not torch.equal(first.test.images, second.test.images)


def test_the_real_size_protocol_refuses_a_fixture(fixture_data: Path, use_data) -> None:
    use_data(fixture_data)
    with pytest.raises(ArenaError, match="needs 60000 images but 'cifar10' has 500"):
        load_splits(CIFAR10)


# Missing or corrupt data: one line and exit 2, before any training.


def test_missing_cifar10_through_the_cli(tmp_path: Path, use_data) -> None:
    empty = use_data(tmp_path / "empty")
    result = run_arena(
        "run", "--protocol", "cifar10", "--defense", "backdoor-wm", home=tmp_path / "home"
    )
    line = one_line_error(result)
    assert "CIFAR-10 is missing" in line
    assert "cifar-10-batches-py/data_batch_1 (and 6 more)" in line
    assert str(empty) in line
    assert "arena data fetch cifar10" in line and "ARENA_DATA" in line
    assert nothing_trained(tmp_path / "home")
    assert not empty.exists()  # nothing was made there, nothing downloaded


def test_one_missing_batch_is_named(tmp_path: Path, use_data) -> None:
    root = use_data(tmp_path / "data")
    write_cifar10(root)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    result = run_arena("run", "--protocol", "cifar10-fixture", home=tmp_path / "home")
    line = one_line_error(result)
    assert "no cifar-10-batches-py/test_batch in the data folder" in line
    assert "more" not in line


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "UnpicklingError|EOFError|truncated"),
        ("garbage", "UnpicklingError|invalid load key"),
        ("labels", "labels outside 0-9"),
    ],
)
def test_corrupt_cifar10_through_the_cli(tmp_path: Path, use_data, damage, reason) -> None:
    root = use_data(tmp_path / "data")
    write_cifar10(root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncate":
        batch.write_bytes(batch.read_bytes()[:5000])
    elif damage == "garbage":
        batch.write_bytes(b"this is not a pickle")
    else:
        with open(batch, "rb") as file:
            content = pickle.load(file)
        content["labels"][0] = 10
        with open(batch, "wb") as file:
            pickle.dump(content, file, protocol=2)
    result = run_arena("run", "--protocol", "cifar10-fixture", home=tmp_path / "home")
    line = one_line_error(result)
    assert "CIFAR-10 in" in line and "is corrupt" in line and "arena data fetch cifar10" in line
    import re

    assert re.search(reason, line), line
    assert nothing_trained(tmp_path / "home")


@pytest.mark.parametrize("damage", ["missing", "truncated", "labels"])
def test_bad_stl10_stops_the_transfer_before_training(
    tmp_path: Path, use_data, damage: str
) -> None:
    root = use_data(tmp_path / "data")
    write_cifar10(root)
    folder = write_stl10(root)
    if damage == "missing":
        (folder / "test_X.bin").unlink()
    elif damage == "truncated":
        path = folder / "train_X.bin"
        path.write_bytes(path.read_bytes()[:-1000])
    else:
        (folder / "train_y.bin").write_bytes(bytes([0] * 200))  # labels are 1-10
    result = run_arena(
        "run",
        "--protocol",
        "cifar10-fixture",
        "--attack",
        "transfer",
        "--attack-param",
        "task=stl10",
        home=tmp_path / "home",
    )
    line = one_line_error(result)
    if damage == "missing":
        assert "STL-10 is missing: no stl10_binary/test_X.bin" in line
        assert "arena data fetch stl10" in line
    else:
        assert "STL-10 in" in line and "is corrupt" in line
    assert nothing_trained(tmp_path / "home")


def test_fetch_is_the_only_download_and_reports_failure(
    tmp_path: Path, use_data, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.cifar as cifar

    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    root = use_data(tmp_path / "data")
    write_cifar10(root)  # not the official files: fetch would replace them
    result = run_arena("data", "fetch", "cifar10", home=tmp_path / "home")
    line = one_line_error(result)
    assert "cannot fetch CIFAR-10 from https://www.cs.toronto.edu" in line
    assert "no route to host" in line
    assert attempts == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    # A match never downloads: with the fixture in place it plays without a network.
    attempts.clear()
    unknown = run_arena("data", "fetch", "cifar100", home=tmp_path / "home")
    assert "unknown downloadable data set 'cifar100'" in one_line_error(unknown)
    assert attempts == []


# Whole matches through the real loader.


def test_a_whole_cifar10_fixture_match(fixture_data: Path, use_data, fixture_home: Path) -> None:
    use_data(fixture_data)
    result = run_arena(
        "run",
        "--protocol",
        "cifar10-fixture",
        "--defense",
        "backdoor-wm",
        "--json",
        home=fixture_home,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["protocol"] == "cifar10-fixture"
    # Chance is 0.1: far above it, images and labels were read as the files mean them.
    assert record["clean"]["test_acc"] >= 0.8
    assert record["marked"]["evidence"]["trials"] == FIXTURE.trigger_size


def test_transfer_to_stl10_on_the_fixture(fixture_data: Path, use_data, fixture_home: Path) -> None:
    use_data(fixture_data)
    result = run_arena(
        "run",
        "--protocol",
        "cifar10-fixture",
        "--attack",
        "transfer",
        "--attack-param",
        "task=stl10",
        "--json",
        home=fixture_home,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    info = record["attack_info"]
    assert info["task"] == "STL-10, the 9 classes shared with CIFAR-10"
    # 200 balanced images a split, 20 of them monkeys: 180 kept.
    assert info["task_train_size"] == info["task_test_size"] == 180
    assert info["task_test_acc"] > 0.3  # chance is 1/9
    assert record["attacked"]["owner_head_evidence"]["trials"] == FIXTURE.trigger_size
    assert record["attacked"]["evidence"]["applicable"] is False  # decided on the owner head


def test_stl10_classes_map_to_cifar10_numbers(fixture_data: Path) -> None:
    from arena.core.context import Context
    from attacks.removal.transfer import stl10_split

    ctx = Context(protocol=FIXTURE)
    (images, labels), _ = load_stl10(fixture_data)
    inputs, mapped = stl10_split(images, labels, ctx, shared=True)
    assert inputs.shape == (180, 3, 32, 32)
    assert 6 not in mapped.tolist()  # CIFAR-10's frog: not in STL-10
    kept = labels[labels != 7]  # STL-10's monkey: not in CIFAR-10
    names = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4, 5: 5, 6: 7, 8: 8, 9: 9}
    assert mapped.tolist() == [names[int(label)] for label in kept]
    _, all_labels = stl10_split(images, labels, ctx, shared=False)
    assert all_labels.tolist() == labels.tolist()


# The paper scripts, end to end on the fixture.


def test_paper_scripts_run_end_to_end_on_the_fixture(
    fixture_data: Path, fixture_home: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "ARENA_HOME": str(fixture_home),
        "ARENA_DATA": str(fixture_data),
        "PROTOCOL": "cifar10-fixture",
        "SEEDS": "0 1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    tables = {}
    for table in ("table1", "table2"):
        out = tmp_path / f"{table}.md"
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / f"paper-{table}.sh")],
            env={**env, "OUT": str(out)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        tables[table] = out.read_text()
        assert done.stdout == tables[table]
    table1, table2 = tables["table1"], tables["table2"]
    assert "protocol `cifar10-fixture v1`" in table1 and "2 seeds (0, 1)" in table1
    for row, paper in (("NO-WM", "93.42"), ("FROMSCRATCH", "93.81"), ("PRE-TRAINED", "93.65")):
        # The summary row, then one per seed.
        line, *per_seed = [line for line in table1.splitlines() if line.startswith(f"| {row} |")]
        assert len(per_seed) == 2
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == paper
        assert "[" in cells[2] and "[" in cells[4]  # 95% intervals from two seeds
        assert cells[5].endswith("/40")
    line, *per_seed = [
        line for line in table2.splitlines() if line.startswith("| CIFAR10 -> STL10 |")
    ]
    assert len(per_seed) == 2
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == "81.87" and cells[3] == "72.0" and cells[5].endswith("/40")
    assert "owner's output layer put back" in table2


def test_reproduce_refuses_bad_input_before_training(tmp_path: Path, use_data) -> None:
    use_data(tmp_path / "nothing")
    home = tmp_path / "home"
    cases = [
        (("reproduce", "table3"), "unknown paper table 'table3'"),
        (("reproduce", "table1", "--protocol", "cifar1"), "unknown protocol 'cifar1'"),
        (("reproduce", "table1", "--protocol", "cifar10-fixture"), "CIFAR-10 is missing"),
        (("reproduce", "table1", "--seed", "1", "--seed", "1"), "seeds repeat"),
    ]
    for args, message in cases:
        assert message in one_line_error(run_arena(*args, home=home))
    assert nothing_trained(home)
