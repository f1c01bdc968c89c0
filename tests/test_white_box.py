"""White-box schemes (defenses/uchida.py, defenses/deepsigns.py) and their committed keys."""

from __future__ import annotations

import dataclasses
import json
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from arena.core.context import Context
from arena.core.models import create_model, default_block_layer, default_conv_layer, find_layer
from arena.core.protocols import get_protocol
from arena.core.registry import defenses
from arena.storage.clean import train_clean
from arena.util.errors import ArenaError, KeyTamperedError
from defenses.white_box import WhiteBoxDefense, WhiteBoxKey

SCHEMES = ("uchida", "deepsigns")


def smoke_context(seed: int = 0) -> Context:
    return Context(protocol=get_protocol("smoke"), seed=seed, device=torch.device("cpu"))


def scheme(name: str, **params) -> WhiteBoxDefense:
    return defenses.get(name)(params)


@pytest.fixture(scope="module")
def keys(train_seed) -> dict[str, WhiteBoxKey]:
    ctx = smoke_context(train_seed)
    return {name: scheme(name).keygen(ctx) for name in SCHEMES}


@pytest.fixture(scope="module")
def clean(train_seed) -> nn.Module:
    ctx = smoke_context(train_seed)
    model = ctx.owner_model()
    train_clean(model, ctx)
    return model


@pytest.fixture(scope="module")
def marked(keys, train_seed) -> dict[str, nn.Module]:
    """Each scheme's marked smoke model, trained once for the module."""
    ctx = smoke_context(train_seed)
    return {name: scheme(name).mark(ctx.owner_model(), keys[name], ctx) for name in SCHEMES}


def edit_json(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def change_char(text: str, position: int) -> str:
    replacement = "A" if text[position] != "A" else "B"
    return text[:position] + replacement + text[position + 1 :]


# --- plugins -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_scheme_is_a_registered_white_box_defense(name) -> None:
    cls = defenses.get(name)
    assert issubclass(cls, WhiteBoxDefense) and cls.access == "white-box"
    assert cls.key_type is WhiteBoxKey and cls.paper and cls.family


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("uchida", {"bits": 0}, "bits must be >= 1"),
        ("uchida", {"strength": -1}, "strength must be > 0"),
        ("uchida", {"layer": " "}, "module path"),
        ("deepsigns", {"key_fraction": 0}, "key_fraction"),
        ("deepsigns", {"target_classes": 0}, "target_classes"),
        ("deepsigns", {"center_strength": -0.1}, "center_strength"),
    ],
)
def test_bad_parameters_are_refused(name, params, message) -> None:
    with pytest.raises(ArenaError, match=message):
        scheme(name, **params)


# --- layers --------------------------------------------------------------------------


def test_default_layers_are_recorded_and_found_by_path(keys) -> None:
    model = smoke_context().new_model()
    assert keys["uchida"].layer == default_conv_layer(model, min_inputs=256) == "layer2.0.conv2"
    assert keys["deepsigns"].layer == default_block_layer(model) == "layer2.0"
    assert isinstance(find_layer(model, keys["uchida"].layer), nn.Conv2d)
    assert keys["uchida"].projection.shape == (256, 3 * 3 * 48)
    assert keys["deepsigns"].projection.shape[0] == 32 and len(keys["deepsigns"].bits) == 32


def test_default_layers_of_resnet18() -> None:
    model = create_model("resnet18", num_classes=10, channels=1, image_size=32)
    assert default_conv_layer(model, min_inputs=256) == "layer2.1.conv2"
    assert default_block_layer(model) == "layer2.1"


def test_a_chosen_layer_is_used() -> None:
    key = scheme("uchida", layer="layer4.0.conv2", bits=64).keygen(smoke_context())
    assert key.layer == "layer4.0.conv2" and key.projection.shape == (64, 3 * 3 * 96)


def test_a_bad_layer_path_names_valid_ones() -> None:
    with pytest.raises(ArenaError, match="no layer 'layer2.0.conv'; did you mean") as raised:
        scheme("uchida", layer="layer2.0.conv").keygen(smoke_context())
    assert "'layer2.0.conv2'" in str(raised.value)
    with pytest.raises(ArenaError, match="top-level layers are 'conv1'"):
        scheme("deepsigns", layer="nowhere.7").keygen(smoke_context())


def test_uchida_refuses_a_layer_too_small_or_not_a_convolution() -> None:
    with pytest.raises(ArenaError, match="fewer than the 256 bits"):
        scheme("uchida", layer="conv1.0").keygen(smoke_context())
    with pytest.raises(ArenaError, match="not a Conv2d"):
        scheme("uchida", layer="layer2.0.bn1").keygen(smoke_context())


# --- keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_key_round_trip(name, keys, tmp_path) -> None:
    key = keys[name]
    key.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "mk.json").stat().st_mode) == 0o600
    loaded = WhiteBoxKey.load(tmp_path)
    assert loaded.fingerprint == key.fingerprint and loaded.layer == key.layer
    assert loaded.scheme == name and loaded.nonce == key.nonce
    np.testing.assert_array_equal(loaded.projection, key.projection)
    np.testing.assert_array_equal(loaded.bits, key.bits)
    if name == "deepsigns":
        np.testing.assert_array_equal(loaded.images, key.images)
        np.testing.assert_array_equal(loaded.classes, key.classes)
        assert key.images.dtype == np.uint8 and len(key.images) == 6  # 1% of 600 images
    public = json.loads((tmp_path / "vk.json").read_text())
    assert set(public) == {"format", "scheme", "layer", "bits", "commitment"}


def test_keys_are_reproducible_from_the_seed_but_nonces_are_fresh() -> None:
    first, again = (scheme("deepsigns").keygen(smoke_context(seed=3)) for _ in range(2))
    other = scheme("deepsigns").keygen(smoke_context(seed=4))
    np.testing.assert_array_equal(first.projection, again.projection)
    np.testing.assert_array_equal(first.images, again.images)
    assert (first.bits == again.bits).all() and first.nonce != again.nonce
    assert not np.array_equal(first.projection, other.projection)


def flip_hex(text: str, position: int = 5) -> str:
    """Change one hex character to a different hex character."""
    return text[:position] + ("0" if text[position] != "0" else "1") + text[position + 1 :]


def flip_first_bit(record: dict) -> None:
    record["bits"] = ("1" if record["bits"][0] == "0" else "0") + record["bits"][1:]


def change_projection_byte(record: dict) -> None:
    record["projection"]["data"] = change_char(record["projection"]["data"], 100)


TAMPERINGS = {
    "projection byte": ("mk", change_projection_byte),
    "one bit": ("mk", flip_first_bit),
    "layer in mk": ("mk", lambda record: record.update(layer="layer2.0.conv1")),
    "nonce": ("mk", lambda record: record.update(nonce=flip_hex(record["nonce"]))),
    "layer in vk": ("vk", lambda record: record.update(layer="layer2.0.conv1")),
    "commitment": ("vk", lambda record: record.update(commitment=flip_hex(record["commitment"]))),
    "bit count": ("vk", lambda record: record.update(bits=record["bits"] - 1)),
    "malformed": ("mk", lambda record: record["projection"].update(shape=[3, 3])),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_tampered_keys_are_refused(tampering, keys, tmp_path) -> None:
    which, edit = TAMPERINGS[tampering]
    keys["uchida"].save(tmp_path)
    edit_json(tmp_path / f"{which}.json", edit)
    with pytest.raises(KeyTamperedError):
        WhiteBoxKey.load(tmp_path)


def test_tampered_key_images_are_refused(keys, tmp_path) -> None:
    keys["deepsigns"].save(tmp_path)
    edit_json(
        tmp_path / "mk.json",
        lambda r: r["images"].update(data=change_char(r["images"]["data"], 40)),
    )
    with pytest.raises(KeyTamperedError, match="commitment"):
        WhiteBoxKey.load(tmp_path)


# --- evidence ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_marked_model_verifies_and_clean_model_answers_at_chance(
    name, keys, marked, clean, train_seed
) -> None:
    ctx = smoke_context(train_seed)
    evidence = scheme(name).evidence(marked[name], keys[name], ctx)
    # Seeds 0-4: uchida 240-247 of 256 bits (148 verify), deepsigns 30-32 of 32 (24).
    assert evidence.verified and evidence.null_p == 0.5
    assert evidence.trials == len(keys[name].bits)
    # The clean model's bits are fair coins independent of the key, so it stays
    # unverified only with probability 1 - alpha (seed 1: 149 of 256 verify uchida at
    # alpha 0.01). What the scheme guarantees is chance agreement: within four standard
    # deviations (sqrt(trials) / 2 each) of half; 109-149 of 256 on seeds 0-14.
    chance = scheme(name).evidence(clean, keys[name], ctx)
    assert abs(chance.successes - chance.trials / 2) <= 2 * math.sqrt(chance.trials), chance


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("architecture", ["test_efficientnet.r160_in1k", "resnet18"])
def test_swapped_architecture_gives_no_matching_bits(name, architecture, keys) -> None:
    # efficientnet lacks the layer path; resnet18 has it with another shape.
    model = create_model(architecture, num_classes=10, channels=1, image_size=16)
    evidence = scheme(name).evidence(model, keys[name], smoke_context())
    assert evidence.successes == 0 and evidence.trials == len(keys[name].bits)
    assert not evidence.verified


def test_evidence_opens_the_commitment(keys, marked) -> None:
    key = keys["uchida"]
    forged_bits = key.bits.copy()
    forged_bits[0] ^= 1
    forged = dataclasses.replace(key, bits=forged_bits)
    with pytest.raises(KeyTamperedError):
        scheme("uchida").evidence(marked["uchida"], forged, smoke_context())


@pytest.mark.parametrize("scheme", ["uchida", "deepsigns"])
def test_a_white_box_key_registers_in_the_ledger(scheme, tmp_path):
    from arena.ownership import vendor as ownership
    from arena.ownership.ledger import Ledger

    smoke = get_protocol("smoke")
    key = ownership.keygen(scheme, smoke, tmp_path / "keys", seed=0)
    entry = ownership.register_key(tmp_path / "keys" / "vk.json", Ledger(tmp_path / "l.sqlite"))
    assert entry.digest == key.fingerprint
    record = json.loads((tmp_path / "keys" / "vk.json").read_text())
    del record["commitment"]
    (tmp_path / "keys" / "vk.json").write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match="malformed"):
        ownership.register_key(tmp_path / "keys" / "vk.json", Ledger(tmp_path / "l.sqlite"))
