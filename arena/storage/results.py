"""The SQLite results database and the content-addressed artifact cache.

Results: one row per match (protocol, plugins and their parameters, seed, model), the
whole JSON record beside the columns the leaderboard filters on. Writes are single
transactions; WAL mode and a busy timeout let concurrent runs share one file. Rows are
read through ``arena.storage.record.upgrade``, so a row of an older shape reads as the
current one: as a dict (``get``, ``records``) or typed (``match``, ``matches``).

Artifacts: trained models as safetensors plus a JSON metadata file, in a folder named by
the SHA-256 of everything that determines the model. The metadata records the model
file's own SHA-256, so a corrupt or replaced file is refused, never silently used.
Nothing here is pickled.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arena.util.errors import ArenaError
from arena.util.paths import default_db_path, make_folder

if TYPE_CHECKING:
    from arena.storage.record import MatchRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS matches (
    match_id TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    protocol_version INTEGER NOT NULL,
    model TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    seed INTEGER NOT NULL,
    defense_params TEXT NOT NULL,
    attack_params TEXT NOT NULL,
    threat_model TEXT NOT NULL,
    versions TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS matches_by_protocol ON matches (protocol, protocol_version);
"""


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (callers open their own transactions), WAL
    journaling and a busy timeout, so concurrent runs can share one file; always closed."""
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA busy_timeout=60000")
        yield connection
    finally:
        connection.close()


def create_tables(path: Path, schema: str, what: str) -> None:
    """Create ``schema``'s tables in the database at ``path`` if they are missing."""
    make_folder(path.parent, f"the {what} {path.name}")
    try:
        with connect(path) as connection:
            connection.executescript(schema)
    except sqlite3.DatabaseError as error:
        raise ArenaError(f"{what} {path} is unreadable: {error}") from None


class ResultSnapshot:
    """Stored matches read from a ``ResultStore`` once (``ResultStore.snapshot``), as
    their JSON text: looked up by id, never written."""

    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows

    def match(self, match_id: str) -> MatchRecord | None:
        text = self.rows.get(match_id)
        return None if text is None else _typed(match_id, text)


class ResultStore:
    """One row per match. Re-running a match replaces its row."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        create_tables(self.path, _SCHEMA, "results database")

    def _connect(self):
        return connect(self.path)

    def check_writable(self) -> None:
        check_writable(self.path, "results database")

    def save(self, match_id: str, record: MatchRecord | Mapping[str, Any]) -> None:
        """Store ``record`` (typed, or a dict of its shape) as the row of ``match_id``."""
        if not isinstance(record, Mapping):
            record = record.to_dict()
        # What a replay says of itself (how long it took) describes that call, not the match.
        record = {name: value for name, value in record.items() if name != "replay_seconds"}
        row = match_row(match_id, record, time.time())
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    "INSERT OR REPLACE INTO matches VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def get(self, match_id: str) -> dict[str, Any] | None:
        """The row of ``match_id`` in the current record shape, or None."""
        rows = self._rows("SELECT match_id, record FROM matches WHERE match_id = ?", [match_id])
        return _upgraded(rows[0][1]) if rows else None

    def records(self, protocol: str | None = None, version: int | None = None) -> list[dict]:
        """Every row (of ``protocol``, of its ``version``) in the current record shape,
        oldest first."""
        return [_upgraded(text) for _, text in self._select(protocol, version)]

    def match(self, match_id: str) -> MatchRecord | None:
        """The typed record of ``match_id``, or None."""
        rows = self._rows("SELECT match_id, record FROM matches WHERE match_id = ?", [match_id])
        return _typed(*rows[0]) if rows else None

    def matches(self, protocol: str | None = None, version: int | None = None) -> list[MatchRecord]:
        """``records``, typed."""
        return [_typed(match_id, text) for match_id, text in self._select(protocol, version)]

    def snapshot(self, protocols: Iterable[str]) -> ResultSnapshot:
        """Every stored match of ``protocols``, read now: what a sweep's workers look up
        finished matches in, so that they never open the database."""
        return ResultSnapshot(
            {match_id: text for name in protocols for match_id, text in self._select(name, None)}
        )

    def _select(self, protocol: str | None, version: int | None) -> list[tuple[str, str]]:
        query, args = "SELECT match_id, record FROM matches", []
        clauses = []
        if protocol is not None:
            clauses.append("protocol = ?")
            args.append(protocol)
        if version is not None:
            clauses.append("protocol_version = ?")
            args.append(version)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        return self._rows(query + " ORDER BY created_at", args)

    def _rows(self, query: str, args: list[Any]) -> list[tuple[str, str]]:
        with self._connect() as connection:
            return connection.execute(query, args).fetchall()


def match_row(match_id: str, record: Mapping[str, Any], created_at: float) -> tuple[Any, ...]:
    """The ``matches`` row of ``record``: the columns the leaderboard filters on, the
    whole record as JSON and when it was made."""
    return (
        match_id,
        record["protocol"],
        record["protocol_version"],
        record["model"],
        record["defense"],
        record["attack"],
        record["seed"],
        json.dumps(record["defense_params"], sort_keys=True),
        json.dumps(record["attack_params"], sort_keys=True),
        json.dumps(record["threat_model"], sort_keys=True),
        json.dumps(record["versions"], sort_keys=True),
        json.dumps(record, sort_keys=True),
        created_at,
    )


def _upgraded(text: str) -> dict[str, Any]:
    # Imported here: the record types import the plugin SDK, which a store opened only to
    # check or write does not need.
    from arena.storage.record import upgrade

    return upgrade(json.loads(text))


def _typed(match_id: str, text: str) -> MatchRecord:
    from arena.storage.record import load

    return load(json.loads(text), where=f"the stored record of match {match_id}")


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, a database that will not take the result at the end."""
    try:
        with connect(path) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:  # a real write, rolled back: the file itself is never changed
                connection.execute("CREATE TABLE arena_write_check (x)")
            finally:
                connection.execute("ROLLBACK")
    except sqlite3.Error as error:
        raise ArenaError(f"{what} {path} is not writable: {error}") from None
