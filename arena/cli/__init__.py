"""Layer 6: the ``arena`` command line (the typer application is ``arena.cli.app.app``)."""

from arena.cli.app import main

__all__ = ["main"]
