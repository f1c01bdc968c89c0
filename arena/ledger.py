"""The ownership ledger: an append-only, hash-chained log of keys and models.

Each entry records a verification-key commitment (``key``) or a model fingerprint
(``model``: SHA-256 of the canonical weights) with its time. Every entry carries the hash
of the one before it, so altering, deleting or reordering a row breaks the chain, and
every read checks the whole chain. A claim can then say whether the key was registered
before the model was first seen.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from arena.errors import ArenaError
from arena.store import connect, create_tables, default_db_path

EntryKind = Literal["key", "model", "spent"]  # "spent": a revealed trigger subset
GENESIS = "0" * 64

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
    """A ledger row was altered, removed or reordered."""


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
    """SHA-256 over the canonical weights: names sorted, each tensor's dtype, shape, bytes."""
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
        """Append an entry (the same key or model again is not re-recorded)."""
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
                recorded_at = time.time()
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

    def first_seen(self, kind: EntryKind, digest: str) -> Entry | None:
        for entry in self.entries():
            if entry.kind == kind and entry.digest == digest:
                return entry
        return None


def _check_chain(entries: list[Entry], path: Path) -> None:
    previous = GENESIS
    for index, entry in enumerate(entries):
        if (
            entry.position != index
            or entry.previous != previous
            or entry.entry_hash != entry.expected_hash()
        ):
            raise LedgerTamperedError(
                f"ledger {path} was altered at entry {index}: its hash chain does not hold"
            )
        previous = entry.entry_hash
