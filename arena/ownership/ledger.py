"""The ownership ledger: an append-only, hash-chained log of keys and models.

Each entry records a verification-key commitment (``key``), a model fingerprint
(``model``: SHA-256 of the canonical weights) or a revealed trigger subset (``spent``),
with its time. Every entry carries the hash of the one before it and every read checks
the whole chain, and times never run backwards along it. A claim can then say whether
the key was registered before the model was first seen.

What the chain proves depends on who could write the file. Whoever can write it can
delete its newest rows, or rewrite any row and recompute every hash after it, and the
chain still holds: alone it catches accidental corruption and edits that did not
recompute the hashes, nothing more. A ``Receipt``, kept outside the ledger by the one an
entry matters to, records that entry and the chain head when it was issued. By the hash
chain, a ledger whose entry at the receipt's head position still has the head's hash
holds every entry up to it unchanged; ``Ledger.check_receipts`` refuses any other (rows
deleted, altered, backdated or reordered at or before the head, or a receipt of another
ledger). Entries after the newest receipt's head, and the truth of the times when they
were written (the ledger machine's clock), stay unproven.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from arena.storage.results import connect, create_tables
from arena.util.errors import ArenaError
from arena.util.jsonio import read_json, write_json_atomic
from arena.util.paths import default_db_path

EntryKind = Literal["key", "model", "spent"]  # "spent": a revealed trigger subset


GENESIS = "0" * 64


RECEIPT_FORMAT = "arena-ledger-receipt/1"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    position INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    label TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    previous TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
"""


class LedgerTamperedError(ArenaError):
    """A ledger row was altered, removed or reordered, or no longer matches a receipt."""


@dataclass(frozen=True)
class Entry:
    position: int
    kind: str
    digest: str
    label: str
    recorded_at: float
    previous: str
    entry_hash: str

    def expected_hash(self) -> str:
        return entry_hash(
            self.position, self.kind, self.digest, self.label, self.recorded_at, self.previous
        )


@dataclass(frozen=True)
class Receipt:
    """One entry and the chain head when the receipt was issued, kept outside the ledger.

    It fixes entries 0 to ``head_position``: a ledger still holding ``head`` there holds
    them all unchanged. ``source`` names the file it was read from, for messages.
    """

    entry: Entry
    head_position: int
    head: str
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "entry": dataclasses.asdict(self.entry),
            "head_position": self.head_position,
            "head": self.head,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str = "") -> Receipt:
        """The receipt in ``record``; one that is malformed or does not hash is refused."""
        name = source or "the receipt"
        if record.get("format") != RECEIPT_FORMAT:
            raise ArenaError(f"{name} is not a ledger receipt ({RECEIPT_FORMAT})")
        try:
            fields = record["entry"]
            entry = Entry(
                int(fields["position"]),
                str(fields["kind"]),
                str(fields["digest"]),
                str(fields["label"]),
                float(fields["recorded_at"]),
                str(fields["previous"]),
                str(fields["entry_hash"]),
            )
            receipt = cls(entry, int(record["head_position"]), str(record["head"]), source)
        except (KeyError, TypeError, ValueError) as error:
            raise ArenaError(f"{name} is not a well-formed ledger receipt: {error!r}") from None
        head_is_entry = receipt.head_position == entry.position
        if (
            entry.position < 0
            or entry.entry_hash != entry.expected_hash()
            or receipt.head_position < entry.position
            or (head_is_entry and receipt.head != entry.entry_hash)
        ):
            raise ArenaError(f"{name} was altered: its entry does not hash to what it records")
        return receipt


def save_receipt(receipt: Receipt, path: Path) -> None:
    write_json_atomic(path, receipt.to_dict())


def load_receipt(path: Path) -> Receipt:
    return Receipt.from_dict(read_json(path), source=str(path))


def _printable(text: str) -> str:
    """``text`` as valid UTF-8: a path's bytes that are not (``os.fsdecode`` surrogates)
    become ``\\xff`` escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system produced
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def entry_hash(
    position: int, kind: str, digest: str, label: str, recorded_at: float, previous: str
) -> str:
    payload = b"|".join(
        [
            str(position).encode(),
            kind.encode(),
            digest.encode(),
            label.encode(),
            struct.pack(">d", recorded_at),
            previous.encode(),
        ]
    )
    return hashlib.sha256(payload).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the canonical weights: names sorted, each tensor's dtype, shape, bytes.

    A model whose weights this process does not hold (a prediction API, an ONNX session)
    names its own fingerprint with ``ledger_fingerprint()``: the normalized URL's hash
    for an endpoint, the file's for an ONNX model.
    """
    own = getattr(model, "ledger_fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(name.encode() + b"\0" + str(tensor.dtype).encode() + b"\0")
        digest.update(str(tuple(tensor.shape)).encode() + b"\0")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Ledger:
    """The ledger table, kept in the results database file unless told otherwise."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        create_tables(self.path, _SCHEMA, "ledger")

    def entries(self) -> list[Entry]:
        """Every entry, after checking the whole chain."""
        with connect(self.path) as connection:
            return self._checked_entries(connection)

    def _checked_entries(self, connection: sqlite3.Connection) -> list[Entry]:
        rows = connection.execute(
            "SELECT position, kind, digest, label, recorded_at, previous, entry_hash "
            "FROM ledger ORDER BY position"
        ).fetchall()
        entries = [Entry(*row) for row in rows]
        _check_chain(entries, self.path)
        return entries

    def append(self, kind: EntryKind, digest: str, label: str = "") -> Entry:
        """Append an entry (the same key or model again is not re-recorded).

        ``label`` (a path, as a person typed it) is kept as valid UTF-8: bytes of a path
        that are not (``os.fsdecode``'s surrogates) are written as escapes.
        """
        label = _printable(label)
        with connect(self.path) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                entries = self._checked_entries(connection)
                for entry in entries:
                    if entry.kind == kind and entry.digest == digest:
                        connection.execute("ROLLBACK")
                        return entry
                position = len(entries)
                previous = entries[-1].entry_hash if entries else GENESIS
                # A clock stepped back must not make an honest ledger read as tampered.
                recorded_at = max(time.time(), entries[-1].recorded_at if entries else 0.0)
                new = Entry(
                    position,
                    kind,
                    digest,
                    label,
                    recorded_at,
                    previous,
                    entry_hash(position, kind, digest, label, recorded_at, previous),
                )
                connection.execute(
                    "INSERT INTO ledger VALUES (?,?,?,?,?,?,?)",
                    (
                        new.position,
                        new.kind,
                        new.digest,
                        new.label,
                        new.recorded_at,
                        new.previous,
                        new.entry_hash,
                    ),
                )
                connection.execute("COMMIT")
                return new
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def receipt(self, entry: Entry) -> Receipt:
        """A receipt for ``entry``, which the ledger holds, with today's chain head."""
        entries = self.entries()
        if entry.position >= len(entries) or entries[entry.position] != entry:
            raise ArenaError(f"ledger {self.path} holds no entry {entry.position} like this one")
        return Receipt(entry, entries[-1].position, entries[-1].entry_hash)

    def head(self) -> Receipt:
        """A receipt for the newest entry: published, it fixes every entry so far."""
        entries = self.entries()
        if not entries:
            raise ArenaError(f"ledger {self.path} is empty; there is no head to anchor")
        return Receipt(entries[-1], entries[-1].position, entries[-1].entry_hash)

    def check_receipts(self, receipts: Sequence[Receipt]) -> int | None:
        """The last position the receipts fix, after checking that the ledger still holds
        every entry up to it as they record; ``None`` without receipts."""
        if not receipts:
            return None
        entries = self.entries()
        for receipt in receipts:
            _check_receipt(receipt, entries, self.path)
        return max(receipt.head_position for receipt in receipts)

    def first_seen(self, kind: EntryKind, digest: str) -> Entry | None:
        for entry in self.entries():
            if entry.kind == kind and entry.digest == digest:
                return entry
        return None


def _check_chain(entries: list[Entry], path: Path) -> None:
    previous, previous_time = GENESIS, float("-inf")
    for index, entry in enumerate(entries):
        if (
            entry.position != index
            or entry.previous != previous
            or entry.entry_hash != entry.expected_hash()
        ):
            raise LedgerTamperedError(
                f"ledger {path} was altered at entry {index}: its hash chain does not hold"
            )
        if entry.recorded_at < previous_time:
            raise LedgerTamperedError(
                f"ledger {path} was altered at entry {index}: it was recorded before entry "
                f"{index - 1}"
            )
        previous, previous_time = entry.entry_hash, entry.recorded_at


def _check_receipt(receipt: Receipt, entries: list[Entry], path: Path) -> None:
    name = receipt.source or "the receipt"
    if len(entries) <= receipt.head_position:
        raise LedgerTamperedError(
            f"ledger {path} has {len(entries)} entries but held {receipt.head_position + 1} "
            f"when {name} was issued: entries were deleted"
        )
    entry = receipt.entry
    if entries[entry.position].entry_hash != entry.entry_hash:
        raise LedgerTamperedError(
            f"ledger {path} no longer holds entry {entry.position} as {name} records it "
            f"({entry.kind} {entry.digest[:16]}): the entry was rewritten, or the receipt "
            "is from another ledger"
        )
    if entries[receipt.head_position].entry_hash != receipt.head:
        raise LedgerTamperedError(
            f"ledger {path} was rewritten between entries {entry.position} and "
            f"{receipt.head_position}: its hash there is not the head {name} records"
        )
