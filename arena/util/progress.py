"""Progress reporting: rich bars on stderr for people, silence for tests and notebooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]


class Reporter:
    """Receives progress of long phases and log lines. This base class stays silent."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda steps: None

    def log(self, message: str) -> None:
        pass


silent = Reporter()


class RichReporter(Reporter):
    """One rich progress bar per training phase, on stderr so stdout stays clean."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        with progress:
            task_id = progress.add_task(description, total=total)
            yield lambda steps: progress.advance(task_id, steps)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
