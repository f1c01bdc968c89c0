"""Run the ``arena`` command as a user's shell would: in this process, or in a new one.

In this process is the default: the same entry point (``arena.cli.main``), arguments,
environment, exit status and output, without starting Python and importing torch again
(seconds a call). ``process=True`` starts a real process; each command keeps at least one
test that does, and tests of what only a process shows (two commands at once, a plugin
installed on ``PYTHONPATH``, Ctrl-C) always do.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

WIDE = 250  # columns: no folded names in tables the tests read


def run_arena(
    *args: str,
    home: Path,
    path: list[Path] | None = None,
    timeout: int = 600,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``arena ARGS`` with ``ARENA_HOME=home``; ``path`` (prepended to ``PYTHONPATH``)
    needs a new process, and so does ``process=True``. ``timeout`` guards a process."""
    env = {"ARENA_HOME": str(home), "COLUMNS": str(WIDE)}
    if path or process:
        return _in_a_process(args, env, path, timeout)
    code, out, err = invoke(list(args), env)
    return subprocess.CompletedProcess(["arena", *args], code, out, err)


def _in_a_process(
    args: tuple[str, ...], env: dict[str, str], path: list[Path] | None, timeout: int
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env}
    if path:
        env["PYTHONPATH"] = os.pathsep.join(str(folder) for folder in path)
    return subprocess.run(
        [sys.executable, "-c", "from arena.cli import console; console()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def invoke(
    args: list[str],
    env: dict[str, str] | None = None,
    passthrough: tuple[type[BaseException], ...] = (),
) -> tuple[int, str, str]:
    """``arena ARGS`` in this process: (exit status, stdout, stderr), as a shell sees them.

    What the command changes for the process (the thread count, deterministic algorithms,
    the streams, the environment) is put back after. An uncaught exception is printed as
    the interpreter would (exit status 1), except those of ``passthrough``, which reach
    the caller.
    """
    import traceback

    from arena.cli import commands

    out, err = io.StringIO(), io.StringIO()
    with _restored(env or {}):
        sys.argv, sys.stdout, sys.stderr = ["arena", *args], out, err
        # The command's consoles, as wide as COLUMNS says (they read it when made).
        width = int(os.environ.get("COLUMNS", "80"))
        commands.stdout = commands.Console(width=width)
        commands.stderr = commands.Console(stderr=True, width=width)
        try:
            commands.main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if isinstance(exit.code, str):
                err.write(exit.code + "\n")
        except passthrough:
            raise
        except BaseException:  # what the interpreter prints for an uncaught exception
            traceback.print_exc(file=err)
            code = 1
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _restored(env: dict[str, str]) -> Iterator[None]:
    from arena.cli import commands

    saved_streams = sys.argv, sys.stdout, sys.stderr
    saved_consoles = commands.stdout, commands.stderr
    saved_env = {name: os.environ.get(name) for name in env}
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv, sys.stdout, sys.stderr = saved_streams
        commands.stdout, commands.stderr = saved_consoles
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
