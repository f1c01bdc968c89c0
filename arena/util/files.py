"""File helpers: hashes, locks, OS error wording, and publishing a file that never
replaces one already there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from arena.util.errors import ArenaError


def os_error_reason(error: OSError, path: Path | None = None) -> str:
    """``not a directory: /a/b`` from an OSError; the file is named only if not ``path``."""
    reason = (error.strerror or str(error)).lower()
    if isinstance(error, FileExistsError):
        reason = "a file is in the way"
    named = error.filename
    return reason if named is None or Path(os.fsdecode(named)) == path else f"{reason}: {named}"


def content_hash(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def check_new_file(path: Path) -> None:
    """``path`` can take a new file: its folder exists and nothing is there yet."""
    if path.exists() or path.is_symlink():
        raise ArenaError(f"{path} exists; refusing to overwrite it (choose another path)")
    if not path.parent.is_dir():
        raise ArenaError(f"the folder of {path} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise ArenaError(f"the folder of {path} is not writable")


def _publish(staged: Path, path: Path, what: str) -> None:
    """Give the staged file its name (mode 0644: public), never over an existing file."""
    staged.chmod(0o644)
    try:
        place_new(staged, path)
    except FileExistsError:
        raise ArenaError(
            f"{path} appeared while the {what} was written; the {what} is kept in {staged}"
        ) from None
    except OSError as error:
        raise ArenaError(
            f"cannot write {path} ({error.strerror}); the {what} is kept in {staged}"
        ) from None


def place_new(staged: Path, path: Path) -> None:
    """Move the finished file ``staged`` to ``path``, which must not exist (else
    ``FileExistsError``): a hard link, which never replaces a file; where the file system
    has none, the name is claimed with an exclusive create and the file renamed onto it."""
    try:
        os.link(staged, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network and FUSE file systems)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(staged, path)
        return
    staged.unlink()
