"""Run the ``arena`` command in a subprocess, as a user's shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_arena(
    *args: str, home: Path, path: list[Path] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """``arena ARGS`` with ``ARENA_HOME=home`` and ``path`` prepended to ``PYTHONPATH``."""
    env = {**os.environ, "ARENA_HOME": str(home), "COLUMNS": "250"}  # wide: no folded names
    if path:
        env["PYTHONPATH"] = os.pathsep.join(str(folder) for folder in path)
    return subprocess.run(
        [sys.executable, "-c", "from arena.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
