"""Strict, bounded JSON reads and atomic JSON writes (staged, then renamed into place)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from arena.util.errors import ArenaError, KeyTamperedError

MAX_JSON_BYTES = 512 * 2**20


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in the regular file ``path``, read up to ``MAX_JSON_BYTES``."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a device (/dev/zero), a pipe, a folder
            raise ArenaError(f"{path} is not a regular file")
        with path.open("rb") as stream:
            data = stream.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise ArenaError(f"{path} is larger than {MAX_JSON_BYTES // 2**20} MiB; not a key")
        record = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ArenaError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ArenaError(f"{path} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise KeyTamperedError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise KeyTamperedError(f"{path} does not hold a JSON object")
    return record


def stage_json(path: Path, record: dict[str, Any], mode: int = 0o644) -> Path:
    """``record`` in a hidden file beside ``path``, on disk, for the caller to rename
    into place (``write_json_atomic``) or to publish without overwriting."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_json_atomic(path: Path, record: dict[str, Any], mode: int = 0o644) -> None:
    """Write to a temporary file in the same folder, then rename: never half a file."""
    temporary = stage_json(path, record, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
