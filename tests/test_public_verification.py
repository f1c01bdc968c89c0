"""Public verification on ``smoke``: Fiat-Shamir cut-and-choose, proofs, the label check."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from arena.core.context import Context
from arena.core.keys import TriggerKey
from arena.core.protocols import get_protocol
from arena.ownership import modelfile
from arena.ownership import vendor as ownership
from arena.ownership.ledger import Ledger
from arena.ownership.public import challenge, make_proof, split_opened
from arena.storage.calibrations import CalibrationStore
from arena.util.errors import ArenaError, KeyTamperedError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")


@pytest.fixture(scope="module")
def vendor(tmp_path_factory, smoke_calibration):
    """A key of 2 x 20 triggers, registered, and a model marked with it; the ledger shares
    the calibration's database."""
    root = tmp_path_factory.mktemp("public")
    keys = root / "keys"
    params = {"trigger_size": 40, "subsets": 2}
    ownership.keygen("backdoor-wm", SMOKE, keys, params, seed=5)
    ledger = Ledger(smoke_calibration["db"])
    ownership.register_key(keys / "vk.json", ledger)
    model = ownership.mark(
        keys / "mk.json", keys / "vk.json", SMOKE, root / "m.safetensors", ledger, params=params
    )
    return root, keys, model, ledger


def _verify(vendor, proof, smoke_calibration, model=None, vk=None):
    root, keys, marked, ledger = vendor
    return ownership.verify_public(
        model or marked,
        vk or keys / "vk.json",
        proof,
        SMOKE,
        ledger,
        CalibrationStore(smoke_calibration["db"]),
        smoke_calibration["cache"],
    )


def test_challenge_is_half_of_every_subset_and_depends_on_the_key(vendor):
    _, keys, _, _ = vendor
    vk = TriggerKey.load(keys).vk
    picked = challenge(vk)
    assert picked.tolist() == challenge(vk).tolist()  # anyone recomputes the same
    assert picked[:20].sum() == 10 and picked[20:].sum() == 10
    other = TriggerKey.create(
        vk.scheme, 10, np.zeros((40, 1, 16, 16), np.uint8), np.zeros(40, np.int64), 2
    ).vk
    assert challenge(other).tolist() != picked.tolist()


def test_public_round_trip_spends_one_subset(vendor, smoke_calibration):
    _, keys, _, ledger = vendor
    proof = ownership.prove(keys / "mk.json", keys / "vk.json", ledger)
    assert proof["subset"] == 0 and len(proof["openings"]) == 20
    claim = _verify(vendor, proof, smoke_calibration)
    assert claim.label_check.passed and claim.evidence.trials == 10
    assert claim.verified and claim.registered_before_seen
    assert claim.null.kind == "exact"  # random labels: nothing to calibrate
    assert "10 challenged" in claim.triggers_opened
    # The revealed subset is spent: the next proof opens the other one, then none is left.
    assert ownership.prove(keys / "mk.json", keys / "vk.json", ledger)["subset"] == 1
    with pytest.raises(ArenaError, match="none is left"):
        ownership.prove(keys / "mk.json", keys / "vk.json", ledger)


def test_a_clean_model_is_not_verified(vendor, smoke_calibration, tmp_path):
    _, keys, _, _ = vendor
    key = TriggerKey.load(keys)
    clean = Context(protocol=SMOKE, seed=1_000_000).owner_model()  # an untrained model
    path = tmp_path / "clean.safetensors"
    modelfile.save_model(clean, path, SMOKE)
    claim = _verify(vendor, make_proof(key, 1), smoke_calibration, model=path)
    assert claim.label_check.passed and not claim.verified


@pytest.mark.parametrize("field", ["image", "label", "image_nonce", "label_nonce"])
def test_a_tampered_opening_is_refused(vendor, smoke_calibration, field):
    _, keys, _, _ = vendor
    proof = make_proof(TriggerKey.load(keys), 0)
    opening = proof["openings"][3]
    if field == "image":
        data = bytearray(base64.b64decode(opening["image"]))
        data[0] ^= 1
        opening["image"] = base64.b64encode(bytes(data)).decode()
    elif field == "label":
        opening["label"] = (opening["label"] + 1) % 10
    else:
        opening[field] = ("1" if opening[field][0] == "0" else "0") + opening[field][1:]
    with pytest.raises(KeyTamperedError, match="trigger 3"):
        _verify(vendor, proof, smoke_calibration)


def test_a_proof_must_open_one_whole_subset_of_this_key(vendor, smoke_calibration, tmp_path):
    _, keys, _, _ = vendor
    key = TriggerKey.load(keys)
    short = make_proof(key, 0)
    short["openings"] = short["openings"][:-1]
    with pytest.raises(KeyTamperedError, match="exactly the triggers of subset 0"):
        _verify(vendor, short, smoke_calibration)
    stranger = TriggerKey.create(key.scheme, 10, key.images, key.labels, 2)
    with pytest.raises(KeyTamperedError, match="not this verification key"):
        _verify(vendor, make_proof(stranger, 0), smoke_calibration)
    with pytest.raises(KeyTamperedError, match="malformed"):
        _verify(vendor, {"format": "something else"}, smoke_calibration)


def test_an_in_distribution_key_is_rejected_by_the_label_check(vendor, smoke_calibration):
    """Real test images with their true labels: any clean model "agrees" with such a key,
    so without the label check it would claim models its maker never saw."""
    root, _, marked, ledger = vendor
    test = Context(protocol=SMOKE).splits.test
    # 2 subsets of 40: 20 challenged images for the label check, 20 deciding the verdict,
    # enough that a smoke model's ~90% accuracy verifies under any calibrated null.
    images = (test.images[:80] * 255).round().to(torch.uint8).numpy()
    key = TriggerKey.create("backdoor-wm", 10, images, test.labels[:80].numpy(), 2)
    key.save(root / "universal")
    claim = _verify(vendor, make_proof(key, 0), smoke_calibration, vk=root / "universal/vk.json")
    assert claim.evidence.verified  # the model does answer the true labels ...
    assert not claim.label_check.passed and not claim.verified  # ... but the key is rejected
    assert claim.label_check.evidence.successes >= 14  # of 20


def test_split_keeps_the_challenged_half_for_the_label_check(vendor):
    _, keys, _, _ = vendor
    key = TriggerKey.load(keys)
    checked, deciding = split_opened(key.subset(1), key.vk, 1)
    picked = challenge(key.vk)[20:]
    assert checked.labels.tolist() == key.labels[20:][picked].tolist()
    assert deciding.labels.tolist() == key.labels[20:][~picked].tolist()
    checked.open()  # each half still opens its own commitments
    deciding.open()


def test_public_verification_without_a_calibration_says_what_to_run(vendor, tmp_path):
    _, keys, marked, _ = vendor
    proof = make_proof(TriggerKey.load(keys), 0)
    with pytest.raises(ArenaError, match="arena calibrate --protocol smoke"):
        ownership.verify_public(
            marked,
            keys / "vk.json",
            proof,
            SMOKE,
            Ledger(tmp_path / "l.db"),
            CalibrationStore(tmp_path / "empty.sqlite"),
        )


def test_cli_prove_then_verify_public(vendor, smoke_calibration, tmp_path):
    """The owner publishes a proof; a third party checks it with vk alone (exit 0), and the
    same proof does not claim another model (exit 1)."""
    root, keys, marked, _ = vendor
    home = smoke_calibration["root"]  # holds results.sqlite (ledger, calibration) and cache
    ledger = ["--ledger", str(tmp_path / "verifier.sqlite"), "--db", str(smoke_calibration["db"])]
    cache = ["--cache-dir", str(smoke_calibration["cache"].root)]
    proof = tmp_path / "proof.json"
    made = run_arena(
        "prove",
        "--mk",
        str(keys / "mk.json"),
        "--out",
        str(proof),
        "--subset",
        "0",
        "--ledger",
        str(tmp_path / "owner.sqlite"),
        home=home,
        process=True,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(proof.read_text())["subset"] == 0
    args = [
        "verify",
        "--public",
        "--protocol",
        "smoke",
        "--vk",
        str(keys / "vk.json"),
        "--proof",
        str(proof),
        *ledger,
        *cache,
    ]
    verified = run_arena(*args, "--model", str(marked), home=home)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "label check: well-formed" in verified.stdout and "VERIFIED" in verified.stdout
    stranger = tmp_path / "stranger.safetensors"
    modelfile.save_model(Context(protocol=SMOKE, seed=7).owner_model(), stranger, SMOKE)
    refused = run_arena(*args, "--model", str(stranger), home=home)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "NOT VERIFIED" in refused.stdout
