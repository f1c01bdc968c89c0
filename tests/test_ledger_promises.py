"""What the ledger proves and what it does not, as the README states it.

Alone, the hash chain catches rows altered without recomputing the hashes after them;
whoever can write the file can delete its newest rows or rewrite it whole, and no read
can tell. A receipt kept outside the ledger fixes every entry up to its head: deleting,
rewriting, backdating or reordering any of them is refused, as is a receipt of another
ledger. Entries after the newest receipt's head stay unproven.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from arena.core.models import create_model
from arena.core.protocols import get_protocol
from arena.ownership import modelfile
from arena.ownership import vendor as ownership
from arena.ownership.ledger import (
    GENESIS,
    Ledger,
    LedgerTamperedError,
    Receipt,
    entry_hash,
    load_receipt,
    save_receipt,
)
from arena.storage.calibrations import CalibrationStore
from arena.util.errors import ArenaError
from tests.cli_runner import run_arena

SMOKE = get_protocol("smoke")
YEAR = 365 * 24 * 3600.0


@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    """The owner's and a pirate's keys, and one untrained model: the ledger facts of a
    claim do not depend on whether its mark verifies."""
    root = tmp_path_factory.mktemp("parties")
    ownership.keygen("backdoor-wm", SMOKE, root / "owner", seed=1)
    ownership.keygen("backdoor-wm", SMOKE, root / "pirate", seed=2)
    model = create_model(SMOKE.model, SMOKE.num_classes, SMOKE.channels, SMOKE.image_size)
    modelfile.save_model(model, root / "model.safetensors", SMOKE)
    return root


def _forge(ledger: Ledger, rows: list[tuple[str, str, str, float]]) -> None:
    """What whoever holds the file can do: write any rows and recompute every hash."""
    previous = GENESIS
    forged = []
    for position, (kind, digest, label, recorded_at) in enumerate(rows):
        hashed = entry_hash(position, kind, digest, label, recorded_at, previous)
        forged.append((position, kind, digest, label, recorded_at, previous, hashed))
        previous = hashed
    connection = sqlite3.connect(ledger.path)
    with connection:
        connection.execute("DELETE FROM ledger")
        connection.executemany("INSERT INTO ledger VALUES (?,?,?,?,?,?,?)", forged)
    connection.close()


def _rows(ledger: Ledger) -> list[tuple[str, str, str, float]]:
    return [(e.kind, e.digest, e.label, e.recorded_at) for e in ledger.entries()]


def _execute(ledger: Ledger, statement: str) -> None:
    connection = sqlite3.connect(ledger.path)
    with connection:
        connection.execute(statement)
    connection.close()


def _model_fingerprint(root: Path) -> str:
    return ownership.model_fingerprint(modelfile.load_model(root / "model.safetensors", SMOKE))


def _verify(root: Path, who: str, ledger: Ledger, receipts: list[Receipt] | None = None):
    return ownership.verify(
        root / "model.safetensors",
        root / who / "mk.json",
        root / who / "vk.json",
        SMOKE,
        ledger,
        calibrations=CalibrationStore(root / "calibrations.sqlite"),
        receipts=receipts or [],
    )


def _owner_marked(root: Path, ledger: Ledger) -> tuple[Receipt, Receipt]:
    """The owner registers the key (its receipt), marks the model and anchors the head."""
    key = ownership.register_key(root / "owner" / "vk.json", ledger)
    registered = ledger.receipt(key)
    ledger.append("model", _model_fingerprint(root), "owner's marked model")
    return registered, ledger.head()


def test_an_honest_ledger_holds_every_receipt_it_issued(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    receipts = [ledger.receipt(ledger.append("key", f"{index:064x}")) for index in range(3)]
    assert ledger.check_receipts(receipts) == 2
    assert ledger.check_receipts([]) is None
    save_receipt(receipts[1], tmp_path / "r.json")
    assert load_receipt(tmp_path / "r.json") == receipts[1]
    # A clock stepped back an hour does not make the honest ledger read as tampered.
    stepped_back = ledger.entries()[-1].recorded_at - 3600
    monkeypatch.setattr("arena.ownership.ledger.time.time", lambda: stepped_back)
    ledger.append("model", "ab" * 32)
    assert len(ledger.entries()) == 4 and ledger.check_receipts(receipts) == 2


def test_deleting_the_last_row_is_unnoticed_without_a_receipt_and_refused_with_one(
    parties, tmp_path
):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    registered, head = _owner_marked(parties, ledger)
    _execute(ledger, "DELETE FROM ledger WHERE position = 1")
    assert [entry.kind for entry in ledger.entries()] == ["key"]  # the chain still holds
    ledger.check_receipts([registered])  # the registration receipt's head is entry 0
    with pytest.raises(LedgerTamperedError, match="held 2 when .* issued: entries were deleted"):
        ledger.check_receipts([head])


def test_deleting_the_models_first_sight_flips_a_late_key_to_first(parties, tmp_path):
    """The issue's attack: the pirate registers after the owner's model was seen, deletes
    the newest rows and registers again, so the model is first seen after the pirate's
    key. Nothing in the ledger shows it; the owner's head receipt refuses it."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    registered, head = _owner_marked(parties, ledger)
    ownership.register_key(parties / "pirate" / "vk.json", ledger)
    late = _verify(parties, "pirate", ledger)
    assert not late.registered_before_seen and late.to_dict()["ledger_order_receipted"] is False

    _execute(ledger, "DELETE FROM ledger WHERE position >= 1")
    ownership.register_key(parties / "pirate" / "vk.json", ledger)
    flipped = _verify(parties, "pirate", ledger)
    assert flipped.registered_before_seen and not flipped.order_receipted  # undetected
    assert _verify(parties, "owner", ledger, [registered]).registered_before_seen
    with pytest.raises(LedgerTamperedError, match="no longer holds entry 1"):
        _verify(parties, "pirate", ledger, [registered, head])


def test_backdating_a_key_by_a_year_with_every_hash_recomputed(parties, tmp_path):
    """In place: the chain is rebuilt and accepted; the registration receipt refuses it."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    registered, _ = _owner_marked(parties, ledger)
    rows = _rows(ledger)
    kind, digest, label, recorded_at = rows[0]
    _forge(ledger, [(kind, digest, label, recorded_at - YEAR), *rows[1:]])
    entries = ledger.entries()  # accepted: every hash holds
    assert entries[0].recorded_at == recorded_at - YEAR
    with pytest.raises(LedgerTamperedError, match="no longer holds entry 0"):
        ledger.check_receipts([registered])


def test_moving_a_late_key_a_year_back_is_accepted_without_a_receipt(parties, tmp_path):
    """Reordered: the pirate's key, registered after the model was seen, is moved in front
    of it and dated a year back. The claim reads 'registered before'; only a receipt
    covering the model's first sight refuses the ledger."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    model = ledger.append("model", _model_fingerprint(parties), "owner's marked model")
    anchored = ledger.head()
    ownership.register_key(parties / "pirate" / "vk.json", ledger)
    assert not _verify(parties, "pirate", ledger).registered_before_seen

    first, pirate = _rows(ledger)
    _forge(ledger, [(*pirate[:3], model.recorded_at - YEAR), first])
    backdated = _verify(parties, "pirate", ledger)
    assert backdated.registered_before_seen and not backdated.order_receipted
    assert backdated.key_registered_at == model.recorded_at - YEAR
    with pytest.raises(LedgerTamperedError, match="no longer holds entry 0"):
        _verify(parties, "pirate", ledger, [anchored])


def test_an_altered_middle_row_is_refused_with_or_without_a_receipt(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for index in range(3):
        ledger.append("key", f"{index:064x}")
    head = ledger.head()
    _execute(ledger, "UPDATE ledger SET label = 'rewritten' WHERE position = 1")
    with pytest.raises(LedgerTamperedError, match="altered at entry 1: its hash chain"):
        ledger.entries()
    with pytest.raises(LedgerTamperedError, match="altered at entry 1"):
        ledger.check_receipts([head])


def test_times_running_backwards_are_refused_even_with_every_hash_recomputed(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for index in range(3):
        ledger.append("key", f"{index:064x}")
    rows = _rows(ledger)
    _forge(ledger, [rows[0], (*rows[1][:3], rows[1][3] - YEAR), rows[2]])
    with pytest.raises(LedgerTamperedError, match="entry 1: it was recorded before entry 0"):
        ledger.entries()


def test_a_receipt_fixes_nothing_after_its_head(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    registered = ledger.receipt(ledger.append("key", "aa" * 32))
    ledger.append("model", "bb" * 32)
    ledger.append("key", "cc" * 32)
    rows = _rows(ledger)
    _forge(ledger, [rows[0], rows[2], (*rows[1][:3], rows[2][3])])
    assert ledger.check_receipts([registered]) == 0  # entries 1-2 reordered: not its business


def test_a_receipt_from_another_ledger_is_refused(parties, tmp_path):
    ours, theirs = Ledger(tmp_path / "ours.sqlite"), Ledger(tmp_path / "theirs.sqlite")
    vk = parties / "owner" / "vk.json"
    receipt = ours.receipt(ownership.register_key(vk, ours))
    ownership.register_key(vk, theirs)  # the same key, the same position, another time
    with pytest.raises(LedgerTamperedError, match="or the receipt is from another ledger"):
        theirs.check_receipts([receipt])
    with pytest.raises(LedgerTamperedError, match="held 1 when"):
        Ledger(tmp_path / "empty.sqlite").check_receipts([receipt])


def test_an_altered_or_malformed_receipt_is_refused(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    save_receipt(ledger.receipt(ledger.append("key", "aa" * 32)), tmp_path / "r.json")
    record = json.loads((tmp_path / "r.json").read_text())
    record["entry"]["recorded_at"] -= YEAR  # a registrant backdating their own receipt
    (tmp_path / "backdated.json").write_text(json.dumps(record))
    with pytest.raises(ArenaError, match="backdated.json was altered"):
        load_receipt(tmp_path / "backdated.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "arena-model/1"}))
    with pytest.raises(ArenaError, match="is not a ledger receipt"):
        load_receipt(tmp_path / "other.json")
    del record["head"]
    (tmp_path / "cut.json").write_text(json.dumps(record))
    with pytest.raises(ArenaError, match="not a well-formed ledger receipt"):
        load_receipt(tmp_path / "cut.json")


def test_a_receipt_fixes_the_order_verify_reports(parties, tmp_path):
    """With a receipt reaching the earlier of the two entries, the answer is fixed."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    registered, head = _owner_marked(parties, ledger)
    owner = _verify(parties, "owner", ledger, [registered])
    assert owner.registered_before_seen and owner.order_receipted
    assert owner.to_dict()["ledger_receipted_through"] == 0
    ownership.register_key(parties / "pirate" / "vk.json", ledger)
    pirate = _verify(parties, "pirate", ledger, [registered])
    assert not pirate.registered_before_seen and not pirate.order_receipted  # model at 1 > 0
    pirate = _verify(parties, "pirate", ledger, [registered, head])
    assert not pirate.registered_before_seen and pirate.order_receipted


def test_the_cli_writes_checks_and_keeps_receipts(parties, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "vk.json").write_bytes((parties / "owner" / "vk.json").read_bytes())
    (keys / "mk.json").write_bytes((parties / "owner" / "mk.json").read_bytes())
    book = ["--ledger", str(tmp_path / "ledger.sqlite")]
    registered = run_arena("register", str(keys / "vk.json"), *book, home=tmp_path, process=True)
    assert registered.returncode == 0, registered.stderr
    receipt = load_receipt(keys / "vk.json.receipt.json")
    assert (receipt.entry.kind, receipt.head_position) == ("key", 0)

    model = parties / "model.safetensors"
    verify = ["verify", "--model", str(model), "--vk", str(keys / "vk.json")]
    verify += ["--mk", str(keys / "mk.json"), "--protocol", "smoke", *book]
    plain = run_arena(*verify, home=tmp_path)
    assert plain.returncode == 1, plain.stderr  # an untrained model: not verified
    assert "no receipt checked: whoever can write the ledger file" in plain.stdout
    receipted = run_arena(*verify, "--receipt", str(keys / "vk.json.receipt.json"), home=tmp_path)
    assert "receipts fix ledger entries 0-0: they fix this order" in receipted.stdout

    head = run_arena(
        "ledger", "head", "--out", str(tmp_path / "head.json"), *book, home=tmp_path, process=True
    )
    assert head.returncode == 0 and "ledger entry 1" in head.stdout
    _execute(Ledger(tmp_path / "ledger.sqlite"), "DELETE FROM ledger WHERE position = 1")
    check = run_arena("ledger", "check", str(tmp_path / "head.json"), *book, home=tmp_path)
    assert check.returncode == 2 and "entries were deleted" in check.stderr

    _execute(Ledger(tmp_path / "ledger.sqlite"), "DELETE FROM ledger")
    again = run_arena("register", str(keys / "vk.json"), *book, home=tmp_path)
    assert again.returncode == 2 and "entries were deleted" in again.stderr
    assert load_receipt(keys / "vk.json.receipt.json") == receipt  # the evidence is kept
