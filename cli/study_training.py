"""Training a study's queued runs in this process, through the worker's own queue loop, with
progress bars; and what is left afterwards, said in words.

The training itself is ``gradlab.worker.queue_loop.train_queued``, the embedded worker's loop
(claim with a lease, each epoch written with its checkpoint, packs, hand-back on a stop), run
in the main thread so that signals reach it; this module only watches it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, TaskID
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import TERMINAL_RUN_STATUSES
from gradlab.settings import WorkerSettings
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.stopping import StopControl

if TYPE_CHECKING:  # the worker's training modules load on use (prometheus_client among them)
    from gradlab.worker.attempt import DataSource

PROGRESS_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class PlannedRun:
    """One seed of one cell of the study, as the store has it now."""

    cell: str
    seed: int
    run_id: str | None
    status: str
    epochs_done: int
    epochs_planned: int

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def epochs_left(self) -> int:
        return 0 if self.finished else max(0, self.epochs_planned - self.epochs_done)

    @property
    def label(self) -> str:
        return f"{self.cell} seed {self.seed}"


def study_plan(factory: sessionmaker[Session], study_id: str) -> list[PlannedRun]:
    """Every planned run of the study, cell by cell, with its status and epochs."""
    from gradlab.store.studies import completion, get_study

    with factory() as session:
        study = get_study(session, study_id)
        assert study is not None  # submitted by this command, never deleted since
        matrix = completion(session, study)
    return [PlannedRun(cell["name"], s["seed"], s["run_id"], s["status"], s["epochs_done"],
                       s["epochs_planned"] or 0)
            for cell in matrix for s in cell["seeds"]]


def train_runs(factory: sessionmaker[Session], settings: WorkerSettings, data: DataSource,
               stop: StopControl, study_id: str, chosen: list[PlannedRun],
               console: Console) -> dict[str, AttemptOutcome]:
    """Train the chosen runs that are queued (the queue loop, in this thread) with a bar for
    the study and one per run in training; how each run trained here ended."""
    from gradlab.science.progress_bar import progress_bar
    from gradlab.worker.queue_loop import train_queued

    among = [r.run_id for r in chosen if r.run_id is not None]
    with progress_bar(console) as progress:
        bars = _StudyBars(factory, study_id, progress, chosen, console)
        bars.start()
        try:
            return train_queued(factory, settings, data, stop, among=among, listener=bars)
        finally:
            bars.stop()


class _StudyBars(threading.Thread):
    """The bars (a ``RunListener``): reads epochs done from the database twice a second (the
    training runs in the main thread)."""

    def __init__(self, factory: sessionmaker[Session], study_id: str, progress: Progress,
                 chosen: list[PlannedRun], console: Console) -> None:
        super().__init__(daemon=True)
        self._factory, self._study_id, self._progress = factory, study_id, progress
        self._console = console
        self._runs = {r.run_id: r for r in chosen if r.run_id is not None}
        self._overall = progress.add_task("study (epochs)",
                                          total=sum(r.epochs_planned for r in chosen))
        self._bars: dict[str, TaskID] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def starting(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        with self._lock:
            if run is not None and run_id not in self._bars:
                self._bars[run_id] = self._progress.add_task(run.label,
                                                             total=run.epochs_planned)
        self.poll()

    def ended(self, outcomes: dict[str, AttemptOutcome]) -> None:
        self.poll()
        for run_id, outcome in outcomes.items():
            with self._lock:
                bar = self._bars.pop(run_id, None)
            if bar is not None:
                self._progress.update(bar, visible=False)
            if outcome is AttemptOutcome.FAILED:
                label = self._runs[run_id].label if run_id in self._runs else run_id
                self._console.print(f"[red]{label} failed[/red] (see the report)")

    def poll(self) -> None:
        from gradlab.store.studies import epochs_done

        with self._lock:
            following = dict(self._bars)
        with self._factory() as session:
            _, by_run = epochs_done(session, self._study_id, list(self._runs))
        for run_id, bar in following.items():
            self._progress.update(bar, completed=by_run.get(run_id, 0))
        self._progress.update(self._overall, completed=sum(by_run.values()))

    def run(self) -> None:
        while not self._halt.wait(PROGRESS_POLL_SECONDS):
            try:
                self.poll()
            except Exception:  # a busy database must not kill the bars' thread
                continue

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        with contextlib.suppress(Exception):
            self.poll()


def unfinished_by_cell(plan: list[PlannedRun],
                       cells: Collection[str] | None = None) -> dict[str, tuple[int, int]]:
    """Per cell (of ``cells``, default all) with runs left: (runs left, epochs left)."""
    left: dict[str, tuple[int, int]] = {}
    for run in plan:
        if run.finished or (cells is not None and run.cell not in cells):
            continue
        runs, epochs = left.get(run.cell, (0, 0))
        left[run.cell] = (runs + 1, epochs + run.epochs_left)
    return left


def describe_left(left: dict[str, tuple[int, int]]) -> str:
    """``3 runs, 212 epochs (vgg38-bn-res 1 run, 60 epochs; ...)``."""
    runs = sum(r for r, _ in left.values())
    epochs = sum(e for _, e in left.values())
    cells = "; ".join(f"{cell} {_count(r, 'run')}, {_count(e, 'epoch')}"
                      for cell, (r, e) in left.items())
    return f"{_count(runs, 'run')}, {_count(epochs, 'epoch')} ({cells})"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
