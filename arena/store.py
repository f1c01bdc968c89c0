"""The SQLite results database and the content-addressed artifact cache.

Results: one row per match (protocol, plugins and their parameters, seed, model), the
whole JSON record beside the columns the leaderboard filters on. Writes are single
transactions; WAL mode and a busy timeout let concurrent runs share one file.

Artifacts: trained models as safetensors plus a JSON metadata file, in a folder named by
the SHA-256 of everything that determines the model. The metadata records the model
file's own SHA-256, so a corrupt or replaced file is refused, never silently used.
Nothing here is pickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from arena.errors import ArenaError, ArtifactError
from arena.keys import read_json, write_json_atomic


def arena_home() -> Path:
    """``$ARENA_HOME``, else the user's data directory for watermark-arena.

    A home that is there but is no folder is refused here, in one line naming the
    setting to change, rather than as a failed mkdir wherever it is first used.
    """
    home = _home_setting()
    try:
        is_file = not stat.S_ISDIR(home.stat().st_mode)
    except FileNotFoundError:
        is_file = False  # made when first written
    except OSError as error:
        raise ArenaError(
            f"the arena's home {home} is unusable: {os_error_reason(error, home)}{_HOME_HINT}"
        ) from None
    if is_file:
        raise ArenaError(f"the arena's home {home} is a file, not a folder{_HOME_HINT}")
    return home


_HOME_HINT = "; set ARENA_HOME to a folder you can write"


def _home_setting() -> Path:
    return Path(os.environ.get("ARENA_HOME") or platformdirs.user_data_dir("watermark-arena"))


def make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and its parents, or say in one line why it cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        home = _home_setting()
        hint = _HOME_HINT if folder == home or home in folder.parents else ""
        raise ArenaError(
            f"cannot create the folder {folder} for {what}: {os_error_reason(error, folder)}{hint}"
        ) from None


def os_error_reason(error: OSError, path: Path | None = None) -> str:
    """``not a directory: /a/b`` from an OSError; the file is named only if not ``path``."""
    reason = (error.strerror or str(error)).lower()
    if isinstance(error, FileExistsError):
        reason = "a file is in the way"
    named = error.filename
    return reason if named is None or Path(os.fsdecode(named)) == path else f"{reason}: {named}"


def default_db_path() -> Path:
    return arena_home() / "results.sqlite"


def default_cache_dir() -> Path:
    return arena_home() / "cache"


def content_hash(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- results ---------------------------------------------------------------------

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


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (made if missing), held for the block and
    released by the kernel if the process dies; other processes wait for it."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


class ResultStore:
    """One row per match. Re-running a match replaces its row."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        create_tables(self.path, _SCHEMA, "results database")

    def _connect(self):
        return connect(self.path)

    def check_writable(self) -> None:
        check_writable(self.path, "results database")

    def save(self, match_id: str, record: dict[str, Any]) -> None:
        row = (
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
            time.time(),
        )
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
        with self._connect() as connection:
            row = connection.execute(
                "SELECT record FROM matches WHERE match_id = ?", (match_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def records(self, protocol: str | None = None, version: int | None = None) -> list[dict]:
        query, args = "SELECT record FROM matches", []
        clauses = []
        if protocol is not None:
            clauses.append("protocol = ?")
            args.append(protocol)
        if version is not None:
            clauses.append("protocol_version = ?")
            args.append(version)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY created_at"
        with self._connect() as connection:
            rows = connection.execute(query, args).fetchall()
        return [json.loads(row[0]) for row in rows]


# --- artifacts ---------------------------------------------------------------------


class ArtifactCache:
    """Models and keys in folders named by the hash of what determines them."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def folder(self, kind: str, spec: dict[str, Any]) -> Path:
        digest = content_hash({"kind": kind, **spec})
        return self.root / kind / digest[:2] / digest

    @contextmanager
    def lock(self, folder: Path) -> Iterator[None]:
        """Hold ``folder``'s lock while it is made: a second run that needs the same
        artifact waits, then finds it finished, instead of making a second one."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(folder.parent / f"{folder.name}.lock"):
            yield

    def check(self, folder: Path) -> dict[str, Any] | None:
        """The metadata of a finished entry whose model file is intact; None if unfinished.

        A missing or altered model file is an error, never silently retrained or used.
        """
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            return None  # the metadata is written last: no metadata, no finished entry
        model_path = folder / "model.safetensors"
        meta = read_json(meta_path)
        hint = f"delete {folder} to train it again"
        if not model_path.exists():
            raise ArtifactError(f"cached model {model_path} is missing; {hint}")
        if file_sha256(model_path) != meta.get("sha256"):
            raise ArtifactError(
                f"cached model {model_path} is corrupt (its SHA-256 does not match {meta_path}); "
                f"{hint}"
            )
        return meta

    def load_model(self, folder: Path, model: nn.Module) -> dict[str, Any] | None:
        """Fill ``model`` from ``folder``; None when nothing is cached there yet."""
        meta = self.check(folder)
        if meta is not None:
            load_model_file(folder / "model.safetensors", model)
        return meta

    def save_model(self, folder: Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the model, then its metadata (with the file's SHA-256); return that."""
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / "model.safetensors"
        temporary = folder / ".model.safetensors.tmp"
        save_file(_state_for_file(model), str(temporary))
        os.replace(temporary, model_path)
        meta = {**meta, "sha256": file_sha256(model_path)}
        write_json_atomic(folder / "meta.json", meta)
        return meta

    def model(
        self,
        folder: Path,
        build: Callable[[], nn.Module],
        train: Callable[[nn.Module], dict[str, Any]],
        spec: dict[str, Any],
    ) -> tuple[nn.Module, dict[str, Any], bool]:
        """The cached model in ``folder``, or ``train(build())`` saved there first.

        Returns the model, its metadata and whether it came from the cache.
        """
        model = build()
        meta = self.load_model(folder, model)
        if meta is not None:
            return model, meta, True
        with self.lock(folder):
            meta = self.load_model(folder, model)  # finished by a run that held the lock
            if meta is not None:
                return model, meta, True
            start = time.perf_counter()
            info = train(model)
            model = info.pop("model", model)
            seconds = time.perf_counter() - start  # what producing it cost, kept for cache hits
            meta = {"spec": spec, "created_at": time.time(), "seconds": seconds, **info}
            return model, self.save_model(folder, model, meta), False


def _state_for_file(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: store plain copies.
    return {
        name: tensor.detach().cpu().contiguous().clone()
        for name, tensor in model.state_dict().items()
    }


def load_model_file(path: Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model`` strictly, with a one-line error if it does not fit."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{path} is not a readable safetensors file: {error}") from None
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ArtifactError(f"{path} does not fit the model: {detail}") from None
