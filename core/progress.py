"""A terminal progress bar for one training run (rich), or nothing when not asked for."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

from gradlab.science.progress_bar import progress_bar

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID
from gradlab.science.records import EpochMetrics


class EpochProgress:
    """One bar per epoch over its steps, and a line of metrics when the epoch ends."""

    def __init__(self, enabled: bool, total_epochs: int) -> None:
        self.enabled = enabled
        self.total_epochs = total_epochs
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Self:
        if self.enabled:
            self._progress = progress_bar()
            self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(f"epoch {epoch + 1}/{self.total_epochs}",
                                                 total=steps)

    def step(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)

    def end_epoch(self, metrics: EpochMetrics) -> None:
        # The bar gives way to one line of metrics per epoch (readable in logs too).
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
            self._progress.console.print(
                f"epoch {metrics.epoch + 1}/{self.total_epochs}  "
                f"train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.4f}  "
                f"val loss {metrics.val_loss:.4f} acc {metrics.val_acc:.4f}  "
                f"lr {metrics.lr:.2e}  {metrics.seconds:.1f}s"
            )
