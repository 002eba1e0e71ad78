"""The one progress bar of gradlab's terminal output (rich): description, bar, count, time
elapsed and remaining. Used for a run's epochs, a study's runs and a remote run's wait."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# The refresh thread shares the GIL with training: a few redraws a second are plenty.
REFRESHES_PER_SECOND = 4


def progress_bar(console: Any | None = None) -> Progress:
    """A rich ``Progress`` with gradlab's columns (enter it as a context manager)."""
    return _bar(console, MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())


def download_bar(console: Any | None = None) -> Progress:
    """The same bar counting bytes: done and in all, speed, time remaining."""
    return _bar(console, DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


def _bar(console: Any | None, *counts: ProgressColumn) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        console=console,
        refresh_per_second=REFRESHES_PER_SECOND,
    )
