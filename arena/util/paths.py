"""Where the arena keeps things: its home (``ARENA_HOME``), the results database and the
artifact cache, and folders made there with a clear error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs

from arena.util.errors import ArenaError
from arena.util.files import os_error_reason


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


def default_db_path() -> Path:
    return arena_home() / "results.sqlite"


def default_cache_dir() -> Path:
    return arena_home() / "cache"


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
