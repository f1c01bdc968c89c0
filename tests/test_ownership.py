"""The ownership protocol on ``smoke``: keygen, register, mark, verify, and the ledger."""

from __future__ import annotations

import base64
import json
import sqlite3

import pytest
import torch

from arena.core.protocols import get_protocol
from arena.ownership import modelfile
from arena.ownership import vendor as ownership
from arena.ownership.ledger import Ledger, LedgerTamperedError
from arena.util.errors import ArenaError, ArtifactError, KeyTamperedError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")


class Payload:
    """An arbitrary object in a pickle: weights-only loading must refuse it."""


@pytest.fixture(scope="module")
def vendor(tmp_path_factory, train_seed):
    """A vendor's key, registered, and the model marked with it (trained once).

    Seeded, so a failure reproduces; its agreement was 20/20 (7 verify) on seeds 0-4.
    """
    root = tmp_path_factory.mktemp("vendor")
    ledger = Ledger(root / "ledger.sqlite")
    ownership.keygen("backdoor-wm", SMOKE, root / "keys", seed=train_seed)
    ownership.register_key(root / "keys" / "vk.json", ledger)
    model_path = ownership.mark(
        root / "keys" / "mk.json",
        root / "keys" / "vk.json",
        SMOKE,
        root / "acme.safetensors",
        ledger,
        seed=train_seed,
    )
    return root, ledger, model_path


def _verify(root, ledger, model_path, keys="keys"):
    return ownership.verify(
        model_path, root / keys / "mk.json", root / keys / "vk.json", SMOKE, ledger
    )


def _stranger(root, seed: int):
    """Another key for the same protocol, drawn once per module."""
    if not (root / "stranger").exists():
        ownership.keygen("backdoor-wm", SMOKE, root / "stranger", seed=seed + 1)
    return root / "stranger"


def test_round_trip_verifies_and_a_fresh_key_does_not(vendor, train_seed):
    root, ledger, model_path = vendor
    claim = _verify(root, ledger, model_path)
    assert claim.verified and claim.registered_before_seen
    assert claim.evidence.successes >= claim.evidence.required_successes
    _stranger(root, train_seed)
    # A fresh key's labels are uniform and independent of the model: Binomial(20, 0.1)
    # agreement, which verifies (7 of 20) with chance 0.24%. 2, 6, 2, 2, 2 on seeds 0-4.
    stranger = _verify(root, ledger, model_path, keys="stranger")
    assert not stranger.verified
    assert stranger.key_registered_at is None and not stranger.registered_before_seen


def test_keygen_refuses_to_overwrite_a_marking_key(vendor):
    root, _, _ = vendor
    with pytest.raises(ArenaError, match="refusing to overwrite"):
        ownership.keygen("backdoor-wm", SMOKE, root / "keys")


def _tamper_mk(path, change):
    record = json.loads(path.read_text())
    change(record["triggers"][7])
    path.write_text(json.dumps(record))


def _flip_image_byte(trigger):
    data = bytearray(base64.b64decode(trigger["image"]))
    data[10] ^= 1
    trigger["image"] = base64.b64encode(bytes(data)).decode()


def _flip_hex(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


@pytest.mark.parametrize(
    "change",
    [
        _flip_image_byte,
        lambda trigger: trigger.update(label=(trigger["label"] + 1) % 10),
        lambda trigger: trigger.update(image_nonce=_flip_hex(trigger["image_nonce"])),
        lambda trigger: trigger.update(label_nonce=_flip_hex(trigger["label_nonce"])),
    ],
    ids=["image byte", "label", "image nonce", "label nonce"],
)
def test_any_tampered_byte_of_mk_is_refused(vendor, tmp_path, change):
    root, ledger, model_path = vendor
    copy = tmp_path / "keys"
    copy.mkdir()
    for name in ("mk.json", "vk.json"):
        (copy / name).write_bytes((root / "keys" / name).read_bytes())
    _tamper_mk(copy / "mk.json", change)
    with pytest.raises(KeyTamperedError, match="trigger 7"):
        ownership.verify(model_path, copy / "mk.json", copy / "vk.json", SMOKE, ledger)


def test_a_tampered_commitment_in_vk_is_refused(vendor, tmp_path):
    root, ledger, model_path = vendor
    record = json.loads((root / "keys" / "vk.json").read_text())
    record["commitments"][2]["label"] = _flip_hex(record["commitments"][2]["label"])
    (tmp_path / "vk.json").write_text(json.dumps(record))
    with pytest.raises(KeyTamperedError, match="trigger 2"):
        ownership.verify(model_path, root / "keys" / "mk.json", tmp_path / "vk.json", SMOKE, ledger)


def test_a_key_registered_after_the_model_was_seen_is_flagged(vendor, tmp_path):
    root, _, model_path = vendor
    ledger = Ledger(tmp_path / "late.sqlite")
    ledger.append("model", ownership.model_fingerprint(modelfile.load_model(model_path, SMOKE)))
    ownership.register_key(root / "keys" / "vk.json", ledger)
    claim = _verify(root, ledger, model_path)
    assert claim.verified  # the mark is there ...
    assert not claim.registered_before_seen  # ... but the key came after the model
    assert claim.to_dict()["key_registered_before_model_seen"] is False


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger SET digest = (CASE WHEN substr(digest, 1, 1) = 'f' THEN 'e' ELSE 'f' END)"
        " || substr(digest, 2) WHERE position = 0",
        "UPDATE ledger SET recorded_at = recorded_at - 3600 WHERE position = 1",
        "DELETE FROM ledger WHERE position = 0",
    ],
)
def test_an_altered_ledger_is_detected(vendor, tmp_path, statement):
    root, _, model_path = vendor
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ownership.register_key(root / "keys" / "vk.json", ledger)
    ledger.append("model", "ab" * 32)
    ledger.append("model", "cd" * 32)
    connection = sqlite3.connect(ledger.path)
    connection.execute(statement)
    connection.commit()
    connection.close()
    with pytest.raises(LedgerTamperedError, match="hash chain"):
        ledger.entries()


def test_a_plain_state_dict_verifies_and_a_pickle_is_refused(vendor, tmp_path):
    root, ledger, model_path = vendor
    model = modelfile.load_model(model_path, SMOKE)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    assert _verify(root, ledger, plain).verified  # no model card: the protocol's model

    rogue = tmp_path / "rogue.pt"
    torch.save({"weights": Payload()}, rogue)
    with pytest.raises(ArtifactError, match="not a readable state dict"):
        modelfile.load_model(rogue, SMOKE)


def test_verify_exit_codes(vendor, tmp_path, train_seed):
    root, ledger, model_path = vendor
    common = ["--protocol", "smoke", "--ledger", str(ledger.path)]
    keys = root / "keys"
    ok = run_arena(
        "verify",
        "--model",
        str(model_path),
        "--vk",
        str(keys / "vk.json"),
        "--mk",
        str(keys / "mk.json"),
        "--json",
        *common,
        home=tmp_path,
        process=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verified"] is True
    stranger = _stranger(root, train_seed)
    no = run_arena(
        "verify",
        "--model",
        str(model_path),
        "--vk",
        str(stranger / "vk.json"),
        "--mk",
        str(stranger / "mk.json"),
        *common,
        home=tmp_path,
    )
    assert no.returncode == 1 and "NOT VERIFIED" in no.stdout
    bad = run_arena(
        "verify",
        "--model",
        str(tmp_path / "missing.safetensors"),
        "--vk",
        str(keys / "vk.json"),
        "--mk",
        str(keys / "mk.json"),
        *common,
        home=tmp_path,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_mark_continues_training_a_users_own_model_file(vendor, tmp_path, train_seed):
    """``--from``: Mark continues from the weights in the user's file. One gentle epoch
    with a second key leaves the first key's mark in place, which no model trained from
    a fresh start could show."""
    root, ledger, model_path = vendor
    ownership.keygen("backdoor-wm", SMOKE, tmp_path / "second", seed=train_seed + 11)
    second = tmp_path / "second"
    remarked = ownership.mark(
        second / "mk.json",
        second / "vk.json",
        SMOKE,
        tmp_path / "remarked.safetensors",
        ledger,
        seed=train_seed,
        params={"epochs": 1, "lr": 1e-4},
        start_from=model_path,
    )
    before = modelfile.load_model(model_path, SMOKE).state_dict()
    after = modelfile.load_model(remarked, SMOKE).state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)  # it trained
    assert _verify(root, ledger, remarked).verified


def _write_class_folders(root, classes=3, per_class=40, size=20):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            picture = torch.rand(size, size, generator=rng) * 60
            picture[:, label * 6 : label * 6 + 6] += 180  # a bar whose place is the class
            Image.fromarray(picture.clamp(0, 255).byte().numpy()).save(folder / f"{index}.png")


def test_mark_and_verify_on_an_image_folder(tmp_path, train_seed):
    from arena.core.data import folder_protocol, load_splits

    _write_class_folders(tmp_path / "data")
    protocol = folder_protocol(tmp_path / "data", SMOKE)
    assert (protocol.num_classes, protocol.owner_size, protocol.test_size) == (3, 108, 12)
    splits = load_splits(protocol)
    assert splits.owner.images.shape[1:] == (1, 16, 16) and len(splits.attacker) == 0
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ownership.keygen("backdoor-wm", protocol, tmp_path / "keys", seed=train_seed + 1)
    keys = tmp_path / "keys"
    marked = ownership.mark(
        keys / "mk.json",
        keys / "vk.json",
        protocol,
        tmp_path / "folder.safetensors",
        ledger,
        seed=train_seed,
        params={"epochs": 30, "triggers_per_batch": 10},
    )
    assert json.loads(modelfile.card_path(marked).read_text())["num_classes"] == 3
    claim = ownership.verify(marked, keys / "mk.json", keys / "vk.json", protocol, ledger)
    assert claim.evidence.null_p == pytest.approx(1 / 3) and claim.verified


def test_an_image_folder_without_class_subfolders_is_refused(tmp_path):
    from arena.core.data import folder_protocol

    (tmp_path / "flat").mkdir()
    with pytest.raises(ArenaError, match="one subfolder of images per class"):
        folder_protocol(tmp_path / "flat", SMOKE)
