"""Abstract trigger images, commitments and key files in arena.keys."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arena.core.keys import (
    NONCE_BYTES,
    TriggerKey,
    VerificationKey,
    abstract_images,
    commit,
    encode_image,
    encode_label,
)
from arena.util.errors import ArenaError, KeyTamperedError
from arena.util.images import load_image_folder

NUM_CLASSES = 10


def make_key(count: int = 6, seed: int = 0) -> TriggerKey:
    rng = np.random.default_rng(seed)
    images = abstract_images(count, 16, 1, rng)
    labels = rng.integers(0, NUM_CLASSES, count)
    return TriggerKey.create("backdoor-wm", NUM_CLASSES, images, labels)


@pytest.fixture
def saved_key(tmp_path: Path) -> tuple[TriggerKey, Path]:
    key = make_key()
    folder = tmp_path / "key"
    key.save(folder)
    return key, folder


def edit_json(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def flip_hex(text: str, position: int = 0) -> str:
    """Change one hex character to a different hex character."""
    replacement = "0" if text[position] != "0" else "1"
    return text[:position] + replacement + text[position + 1 :]


# --- abstract images ---------------------------------------------------------------


@pytest.mark.parametrize(("count", "size", "channels"), [(3, 16, 1), (2, 32, 3), (1, 8, 1)])
def test_abstract_images_shape_and_dtype(count: int, size: int, channels: int) -> None:
    images = abstract_images(count, size, channels, np.random.default_rng(0))
    assert images.shape == (count, channels, size, size)
    assert images.dtype == np.uint8


def test_abstract_images_are_not_flat() -> None:
    images = abstract_images(10, 32, 1, np.random.default_rng(1))
    assert all(len(np.unique(image)) > 10 for image in images)


def test_abstract_images_are_deterministic_for_a_seed() -> None:
    first = abstract_images(5, 32, 3, np.random.default_rng(123))
    second = abstract_images(5, 32, 3, np.random.default_rng(123))
    other = abstract_images(5, 32, 3, np.random.default_rng(124))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_keys_from_different_seeds_share_no_image() -> None:
    first = abstract_images(100, 32, 1, np.random.default_rng(0))
    second = abstract_images(100, 32, 1, np.random.default_rng(1))
    first_bytes = {image.tobytes() for image in first}
    second_bytes = {image.tobytes() for image in second}
    assert len(first_bytes) == 100 and len(second_bytes) == 100
    assert not first_bytes & second_bytes


# --- commitments ---------------------------------------------------------------------


def test_commitments_bind_nonce_and_content() -> None:
    image = np.zeros((1, 4, 4), dtype=np.uint8)
    nonce = bytes(NONCE_BYTES)
    digest = commit(nonce, encode_image(image))
    assert len(digest) == 64
    assert commit(nonce, encode_image(image)) == digest
    changed = image.copy()
    changed[0, 0, 0] = 1
    assert commit(nonce, encode_image(changed)) != digest
    assert commit(b"\x01" + nonce[1:], encode_image(image)) != digest
    # The shape is part of the encoding: the same pixels in another shape differ.
    assert encode_image(image) != encode_image(image.reshape(1, 2, 8))
    assert encode_label(3) != encode_label(4)


def test_encode_image_refuses_non_uint8() -> None:
    with pytest.raises(ArenaError, match="uint8"):
        encode_image(np.zeros((1, 4, 4), dtype=np.float32))
    with pytest.raises(ArenaError, match="uint8"):
        encode_image(np.zeros((4, 4), dtype=np.uint8))


# --- keys ----------------------------------------------------------------------------


def test_create_commits_to_every_trigger() -> None:
    key = make_key(count=5)
    assert len(key) == 5
    assert len(key.vk.image_commitments) == 5 and len(key.vk.label_commitments) == 5
    assert len(set(key.image_nonces + key.label_nonces)) == 10
    assert all(len(nonce) == NONCE_BYTES for nonce in key.image_nonces)
    key.open()  # a fresh key opens
    images, labels = key.tensors()
    assert images.dtype == torch.float32 and images.shape == (5, 1, 16, 16)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.equal(labels, torch.as_tensor(key.labels))


def test_two_keys_on_the_same_triggers_have_different_commitments() -> None:
    key = make_key(seed=3)
    again = TriggerKey.create(key.scheme, NUM_CLASSES, key.images, key.labels)
    assert set(key.vk.image_commitments).isdisjoint(again.vk.image_commitments)
    assert key.fingerprint != again.fingerprint


def test_create_refuses_bad_labels() -> None:
    images = abstract_images(2, 8, 1, np.random.default_rng(0))
    with pytest.raises(ArenaError, match="labels"):
        TriggerKey.create("backdoor-wm", NUM_CLASSES, images, np.array([0]))
    with pytest.raises(ArenaError, match=r"\[0, 10\)"):
        TriggerKey.create("backdoor-wm", NUM_CLASSES, images, np.array([0, 10]))


def test_save_and_load_round_trip(saved_key: tuple[TriggerKey, Path]) -> None:
    key, folder = saved_key
    loaded = TriggerKey.load(folder)
    np.testing.assert_array_equal(loaded.images, key.images)
    np.testing.assert_array_equal(loaded.labels, key.labels)
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int64
    assert loaded.image_nonces == key.image_nonces
    assert loaded.label_nonces == key.label_nonces
    assert loaded.vk == key.vk
    assert loaded.fingerprint == key.fingerprint
    assert loaded.scheme == "backdoor-wm" and loaded.num_classes == NUM_CLASSES


def test_marking_key_is_private_and_no_temporary_files_remain(
    saved_key: tuple[TriggerKey, Path],
) -> None:
    _, folder = saved_key
    assert stat.S_IMODE((folder / "mk.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "vk.json").stat().st_mode) == 0o644
    assert sorted(path.name for path in folder.iterdir()) == ["mk.json", "vk.json"]


def test_verification_key_holds_no_secret(saved_key: tuple[TriggerKey, Path]) -> None:
    key, folder = saved_key
    public = (folder / "vk.json").read_text()
    for nonce in key.image_nonces + key.label_nonces:
        assert nonce.hex() not in public
    assert base64.b64encode(key.images[0].tobytes()).decode() not in public


def test_tampered_image_is_refused(saved_key: tuple[TriggerKey, Path]) -> None:
    _, folder = saved_key

    def flip_pixel(record: dict) -> None:
        pixels = bytearray(base64.b64decode(record["triggers"][2]["image"]))
        pixels[17] ^= 0x01
        record["triggers"][2]["image"] = base64.b64encode(bytes(pixels)).decode()

    edit_json(folder / "mk.json", flip_pixel)
    with pytest.raises(KeyTamperedError, match="trigger 2: the image"):
        TriggerKey.load(folder)


def test_tampered_label_is_refused(saved_key: tuple[TriggerKey, Path]) -> None:
    _, folder = saved_key

    def change_label(record: dict) -> None:
        trigger = record["triggers"][3]
        trigger["label"] = (trigger["label"] + 1) % NUM_CLASSES

    edit_json(folder / "mk.json", change_label)
    with pytest.raises(KeyTamperedError, match="trigger 3: the label"):
        TriggerKey.load(folder)


@pytest.mark.parametrize(("field", "index"), [("image_nonce", 1), ("label_nonce", 4)])
def test_tampered_nonce_is_refused(
    saved_key: tuple[TriggerKey, Path], field: str, index: int
) -> None:
    _, folder = saved_key

    def change_nonce(record: dict) -> None:
        record["triggers"][index][field] = flip_hex(record["triggers"][index][field], 10)

    edit_json(folder / "mk.json", change_nonce)
    with pytest.raises(KeyTamperedError, match=f"trigger {index}"):
        TriggerKey.load(folder)


@pytest.mark.parametrize(("field", "index"), [("image", 0), ("label", 5)])
def test_tampered_commitment_is_refused(
    saved_key: tuple[TriggerKey, Path], field: str, index: int
) -> None:
    _, folder = saved_key

    def change_commitment(record: dict) -> None:
        record["commitments"][index][field] = flip_hex(record["commitments"][index][field], 63)

    edit_json(folder / "vk.json", change_commitment)
    with pytest.raises(KeyTamperedError, match=f"trigger {index}: the {field}"):
        TriggerKey.load(folder)


def test_non_hex_commitment_is_malformed(saved_key: tuple[TriggerKey, Path]) -> None:
    _, folder = saved_key

    def break_commitment(record: dict) -> None:
        record["commitments"][0]["image"] = "z" + record["commitments"][0]["image"][1:]

    edit_json(folder / "vk.json", break_commitment)
    with pytest.raises(KeyTamperedError, match="malformed"):
        TriggerKey.load(folder)


@pytest.mark.parametrize(
    "edit",
    [
        lambda record: record["triggers"][0].update(image_nonce="not hex"),
        lambda record: record["triggers"][0].update(image="***"),
        lambda record: record["triggers"][0].pop("label"),
        lambda record: record.update(format="something-else/1"),
        lambda record: record.update(image_shape=[1, 15, 15]),
    ],
    ids=["nonce", "base64", "missing-label", "format", "shape"],
)
def test_malformed_marking_key_is_refused(saved_key: tuple[TriggerKey, Path], edit) -> None:
    _, folder = saved_key
    edit_json(folder / "mk.json", edit)
    with pytest.raises(KeyTamperedError, match="malformed"):
        TriggerKey.load(folder)


def test_dropped_trigger_is_refused(saved_key: tuple[TriggerKey, Path]) -> None:
    _, folder = saved_key
    edit_json(folder / "mk.json", lambda record: record["triggers"].pop())
    with pytest.raises(KeyTamperedError, match="commits to 6 triggers"):
        TriggerKey.load(folder)


def test_key_of_another_scheme_is_refused(saved_key: tuple[TriggerKey, Path]) -> None:
    _, folder = saved_key
    edit_json(folder / "vk.json", lambda record: record.update(scheme="other"))
    with pytest.raises(KeyTamperedError, match="scheme"):
        TriggerKey.load(folder)


@pytest.mark.parametrize("name", ["mk.json", "vk.json"])
def test_non_json_file_is_refused(saved_key: tuple[TriggerKey, Path], name: str) -> None:
    _, folder = saved_key
    (folder / name).write_text("this is not JSON {")
    with pytest.raises(KeyTamperedError, match="not valid JSON"):
        TriggerKey.load(folder)


def test_json_that_is_not_an_object_is_refused(saved_key: tuple[TriggerKey, Path]) -> None:
    _, folder = saved_key
    (folder / "vk.json").write_text("[1, 2, 3]")
    with pytest.raises(KeyTamperedError, match="JSON object"):
        TriggerKey.load(folder)


def test_missing_key_file_is_an_arena_error(tmp_path: Path) -> None:
    with pytest.raises(ArenaError, match="does not exist") as raised:
        TriggerKey.load(tmp_path / "nowhere")
    assert not isinstance(raised.value, KeyTamperedError)


def test_verification_key_dict_round_trip() -> None:
    key = make_key()
    assert VerificationKey.from_dict(key.vk.to_dict()) == key.vk
    assert key.vk.to_dict()["image_shape"] == [1, 16, 16]


# --- user trigger images ---------------------------------------------------------------


def test_load_image_folder_reads_and_resizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(colour).save(tmp_path / "a.png")
    Image.fromarray(np.full((10, 10), 200, dtype=np.uint8)).save(tmp_path / "b.PNG")
    (tmp_path / "notes.txt").write_text("not an image")

    grey = load_image_folder(tmp_path, size=16, channels=1)
    assert grey.shape == (2, 1, 16, 16) and grey.dtype == np.uint8
    # Sorted by name: the uniform image is second and stays uniform after resizing.
    assert np.all(grey[1] == 200)

    rgb = load_image_folder(tmp_path, size=8, channels=3)
    assert rgb.shape == (2, 3, 8, 8) and rgb.dtype == np.uint8
    assert np.all(rgb[1] == 200)


def test_load_image_folder_keeps_the_channel_order(tmp_path: Path) -> None:
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    image = load_image_folder(tmp_path, size=8, channels=3)[0]
    assert np.all(image[0] == 255) and np.all(image[1:] == 0)


def test_load_image_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(ArenaError, match="no images"):
        load_image_folder(tmp_path, size=16, channels=1)
    (tmp_path / "readme.txt").write_text("still no images")
    with pytest.raises(ArenaError, match="no images"):
        load_image_folder(tmp_path, size=16, channels=1)
    with pytest.raises(ArenaError, match="does not exist"):
        load_image_folder(tmp_path / "missing", size=16, channels=1)


def test_load_image_folder_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ArenaError, match="broken.png"):
        load_image_folder(tmp_path, size=16, channels=1)
