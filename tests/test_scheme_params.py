"""A scheme configured away from its defaults is verified as configured: its key records
the parameters it was drawn with, and its null is the calibration of those parameters,
never the defaults' (another target class draws other keys, which the defaults'
calibration never measured on clean models)."""

from __future__ import annotations

import json

import pytest

from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.ownership import vendor as ownership
from arena.storage.calibrations import CalibrationStore
from arena.util.errors import ArenaError, KeyTamperedError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")


def fitted_record(params: dict | None = None, mean: float = 0.05) -> dict:
    """A calibration record of ``content`` with a fitted null, as ``calibrate`` stores it
    (``params``: the parameters it records; None: a record from before they were)."""
    record = {
        "format": 2,
        "protocol": SMOKE.name,
        "protocol_fingerprint": SMOKE.fingerprint,
        "defense": "content",
        "alpha": SMOKE.alpha,
        "null": {
            "kind": "beta-binomial",
            "counts": 12,
            "mean": mean,
            "dispersion": 0.05,
            "smallest_p_value": 1e-12,
        },
        "models": [{"architecture": "test_resnet.r160_in1k"}],
        "false_claims": {},
    }
    if params is not None:
        record["defense_params"] = params
    return record


def test_a_null_is_looked_up_by_the_schemes_parameters(tmp_path):
    store = CalibrationStore(tmp_path / "r.sqlite")
    old = store.save(fitted_record(None, mean=0.04))  # made at the defaults
    assert store.null(SMOKE, "content").calibration == old
    variant = {"target_class": 3}
    refused = store.null(SMOKE, "content", variant)
    assert refused.kind == "uncalibrated" and not refused.sound
    assert "arena calibrate --protocol smoke --defense content -D target_class=3" in refused.source
    mine = store.save(fitted_record({"target_class": 3}, mean=0.07))
    assert store.null(SMOKE, "content", variant).calibration == mine
    assert store.null(SMOKE, "content", variant).p == 0.07
    assert store.null(SMOKE, "content").calibration == old  # the defaults keep theirs
    # Marking-only parameters draw the same keys: the calibration still holds.
    assert store.null(SMOKE, "content", {"epochs": 2, "subsets": 2}).calibration == old
    snapshot = store.snapshot([(SMOKE, "content", variant), (SMOKE, "content", None)])
    assert snapshot.null(SMOKE, "content", variant).calibration == mine
    assert snapshot.null(SMOKE, "content").calibration == old


def test_a_key_records_the_parameters_it_was_drawn_with(tmp_path):
    plain = ownership.keygen("content", SMOKE, tmp_path / "plain", seed=1)
    assert "params" not in json.loads((tmp_path / "plain" / "vk.json").read_text())
    assert plain.recorded_params() == {}
    key = ownership.keygen("content", SMOKE, tmp_path / "k", {"target_class": 3}, seed=1)
    vk = json.loads((tmp_path / "k" / "vk.json").read_text())
    assert vk["params"] == {"target_class": 3}
    assert set(key.labels.tolist()) == {3}
    # Part of the key's identity: the fingerprint the ledger registers covers them.
    assert TriggerKey.public_fingerprint(tmp_path / "k" / "vk.json") == key.fingerprint
    defense, loaded = ownership.load_key(tmp_path / "k" / "mk.json", tmp_path / "k" / "vk.json")
    assert defense.params.target_class == 3 and loaded.fingerprint == key.fingerprint
    # Marking parameters may be added; one that contradicts the key is refused.
    defense, _ = ownership.load_key(
        tmp_path / "k" / "mk.json", tmp_path / "k" / "vk.json", {"epochs": 2}
    )
    assert (defense.params.target_class, defense.params.epochs) == (3, 2)
    with pytest.raises(ArenaError, match="drawn with content target_class=3"):
        ownership.load_key(
            tmp_path / "k" / "mk.json", tmp_path / "k" / "vk.json", {"target_class": 0}
        )


def test_changing_a_keys_recorded_parameters_is_tampering(tmp_path):
    ownership.keygen("content", SMOKE, tmp_path / "k", {"target_class": 3}, seed=1)
    vk_path = tmp_path / "k" / "vk.json"
    original = TriggerKey.public_fingerprint(vk_path)
    vk = json.loads(vk_path.read_text())
    vk["params"] = {"target_class": 0}
    vk_path.write_text(json.dumps(vk))
    assert TriggerKey.public_fingerprint(vk_path) != original  # not the registered key
    vk["params"] = {"target_class": [0]}
    vk_path.write_text(json.dumps(vk))
    with pytest.raises(KeyTamperedError, match="params must map names"):
        TriggerKey.load(tmp_path / "k")


def test_verify_decides_with_the_null_of_the_keys_parameters(tmp_path):
    """A key of content with target class 3 is refused against a store that holds only
    the defaults' calibration, before anything is spent, and says how to calibrate."""
    from tests.test_calibration import assert_refused_unspent

    store = CalibrationStore(tmp_path / "r.sqlite")
    store.save(fitted_record({}))
    keys = tmp_path / "keys"
    ownership.keygen("content", SMOKE, keys, {"target_class": 3, "subsets": 2}, seed=3)
    assert_refused_unspent(keys, tmp_path, store, "UNCALIBRATED")


def test_the_cli_calibrates_and_reads_back_a_configured_scheme(tmp_path):
    bad = run_arena(
        "calibrate", "--protocol", "smoke", "--defense", "content", "-D", "target=3",
        home=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "did you mean 'target_class'" in bad.stderr
    missing = run_arena(
        "calibrate", "--protocol", "smoke", "--defense", "content", "-D", "target_class=3",
        "--stored", home=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "--defense content -D target_class=3" in missing.stderr
