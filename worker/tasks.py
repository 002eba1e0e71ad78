"""The worker's Celery tasks: train a run, reap lost runs. Registered on an app by name."""

from __future__ import annotations

from celery import Celery, Task

from gradlab.dispatch.dispatchers import CeleryDispatcher
from gradlab.dispatch.queues import REAP_TASK, TRAIN_TASK
from gradlab.observability.logs import log_context
from gradlab.settings import get_settings
from gradlab.worker import process_state
from gradlab.worker.reaper import reap
from gradlab.worker.runner import execute_run


def train_run_task(run_id: str) -> None:
    """Claim the run's lease (or return), train it, write every epoch; Postgres is the record."""
    with log_context(run_id=run_id):  # every line of this run names it (and, once claimed,
        execute_run(  # its experiment and attempt)
            run_id,
            process_state.session_factory(),
            process_state.load_data,
            process_state.device(),
            settings=get_settings(),
        )


def reap_lost_runs_task(task: Task) -> list[str]:
    """Requeue runs whose lease expired and resend stale queued runs to the broker."""
    return reap(process_state.session_factory(), CeleryDispatcher(task.app), get_settings())


def register(app: Celery) -> None:
    app.task(name=TRAIN_TASK)(train_run_task)
    app.task(name=REAP_TASK, bind=True)(reap_lost_runs_task)
