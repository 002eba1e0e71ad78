"""Train queued runs one claim after another, the database being the queue: the loop of the
embedded worker (``gradlab serve``) and of ``gradlab study run`` alike.

Takes the oldest queued run (of ``among``, when given), trains it with ``execute_run`` (its
companions with it), and goes on until a stop is asked or no run is left; with ``idle`` it
waits for more instead of ending (the embedded worker). Runs the time limit refused (their
next epoch cannot end before it) are not offered again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.worker.attempt import DataSource
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.runner import execute_run
from gradlab.worker.stopping import StopControl

log = logging.getLogger(__name__)


class RunListener(Protocol):
    """Told when a run starts and how the runs of its claim ended (progress, messages)."""

    def starting(self, run_id: str) -> None: ...

    def ended(self, outcomes: dict[str, AttemptOutcome]) -> None: ...


def train_queued(
    factory: sessionmaker[Session], settings: WorkerSettings, data: DataSource, stop: StopControl,
    *, among: Collection[str] | None = None, listener: RunListener | None = None,
    idle: Callable[[], bool] | None = None, between: Callable[[], None] | None = None,
) -> dict[str, AttemptOutcome]:
    """Train queued runs until a stop is asked or none is left (see the module docstring).

    ``idle()`` is called when none is queued: True to look again (it waits first), False to
    end; without it the loop ends. ``between()`` runs before each look (the reaper's pass).
    Returns how every run it trained ended, the last attempt of each.
    """
    outcomes: dict[str, AttemptOutcome] = {}
    while not stop.requested:
        if between is not None:
            between()
        refused = () if stop.time_limit is None else tuple(stop.time_limit.refused)
        with factory() as session:
            queued = runs.find_queued_runs(session, limit=1, among=among, excluding=refused)
        if not queued:
            if idle is not None and idle():
                continue
            break
        if listener is not None:
            listener.starting(queued[0])
        trained = execute_run(queued[0], factory, data, settings.device, settings=settings,
                              stop=stop, among=among)
        outcomes.update(trained)
        if listener is not None:
            listener.ended(trained)
    return outcomes
