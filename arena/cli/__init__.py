"""Layer 6: the ``arena`` command line. ``app`` is the typer application, ``console`` the
``arena`` executable and ``main`` the command line it runs (in-process callers use
``main``); the commands live in ``arena.cli.commands``."""

from __future__ import annotations

from typing import Any

from arena.cli.commands import app, console, main

__all__ = ["app", "console", "main"]


def __getattr__(name: str) -> Any:
    # Release 0.1's ``arena.cli`` was one module: its other names resolve here for one
    # release (the commands module holds them).
    import importlib
    import warnings

    commands = importlib.import_module("arena.cli.commands")
    if name.startswith("__") or not hasattr(commands, name):
        raise AttributeError(f"module 'arena.cli' has no attribute {name!r}")
    warnings.warn(
        f"arena.cli.{name} moved to arena.cli.commands.{name}; the old path goes in the "
        "next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(commands, name)
