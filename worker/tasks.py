"""The worker's Celery tasks: train a run, reap lost runs. Registered on an app by name."""

from __future__ import annotations

import logging

from celery import Celery, Task

from gradlab.dispatch.dispatchers import CeleryDispatcher
from gradlab.dispatch.queues import REAP_TASK, TRAIN_TASK
from gradlab.observability.logs import log_context
from gradlab.services.transaction import dispatch
from gradlab.settings import get_worker_settings
from gradlab.worker import process_state
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.reaper import reap
from gradlab.worker.runner import execute_run
from gradlab.worker.stopping import stop_on_signals

log = logging.getLogger(__name__)


def train_run_task(task: Task, run_id: str) -> None:
    """Claim the run's lease (or return), train it, write every epoch; Postgres is the record.

    SIGTERM (forwarded by the main process when the worker shuts down) hands the run back at
    the next safe point within the grace period; a run handed back, or queued again after an
    infrastructure failure, is sent to the queue again at once for another worker. Runs that
    fuse with it (``GRADLAB_PACK_SIZE``) train with it as one pack; their own messages, when
    they arrive, find them finished or leased and do nothing.
    """
    settings = get_worker_settings()
    # every line of this run names it (and, once claimed, its experiment and attempt)
    with log_context(run_id=run_id), stop_on_signals(settings.shutdown_grace_seconds) as stop:
        outcomes = execute_run(
            run_id,
            process_state.session_factory(),
            process_state.load_data,
            process_state.device(),
            settings=settings,
            stop=stop,
        )
    # the run and the companions it trained with in a pack
    handed_back = [rid for rid, ended in outcomes.items() if ended is AttemptOutcome.HANDED_BACK]
    dispatch(CeleryDispatcher(task.app), handed_back)  # unsent: queued, the reaper sends them


def reap_lost_runs_task(task: Task) -> list[str]:
    """Requeue runs whose lease expired and resend stale queued runs to the broker."""
    return reap(process_state.session_factory(), CeleryDispatcher(task.app), get_worker_settings())


def register(app: Celery) -> None:
    app.task(name=TRAIN_TASK, bind=True)(train_run_task)
    app.task(name=REAP_TASK, bind=True)(reap_lost_runs_task)
