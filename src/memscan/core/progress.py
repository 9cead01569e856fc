"""One progress-bar helper (rich) for the whole package; ``--quiet`` silences it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_state = {"quiet": False}
console = Console(stderr=True)  # progress and log lines
out_console = Console()  # results (tables) on stdout


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) progress bars and informational log lines."""
    _state["quiet"] = bool(quiet)


def is_quiet() -> bool:
    return _state["quiet"]


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Route memscan's log records to stderr through rich (WARNING by default)."""
    set_quiet(quiet)
    level = logging.ERROR if quiet else (logging.DEBUG if verbose else logging.WARNING)
    root = logging.getLogger("memscan")
    root.handlers[:] = [RichHandler(console=console, show_path=False, show_time=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


@contextmanager
def progress(total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)``; draws a bar unless quiet.

    Args:
        total: number of units (items, blocks); None for an indeterminate bar.
        description: what is being done, e.g. ``"prepare"``.
    """
    if _state["quiet"] or not console.is_terminal:  # no bar when stderr is a pipe or a CI log
        yield lambda n=1: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
