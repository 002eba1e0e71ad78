"""Celery tasks: train a run (``gradlab.train_run``) and reap lost runs."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays, load_cifar, resolve_data_dir
from gradlab.settings import get_settings
from gradlab.store.session import make_engine, make_session_factory
from gradlab.worker.celery_app import REAP_TASK, app
from gradlab.worker.dispatch import TRAIN_TASK, CeleryDispatcher
from gradlab.worker.reaper import reap
from gradlab.worker.runner import execute_run

log = logging.getLogger(__name__)

# Per process: created lazily in the child, never inherited across fork (see celery_app).
_factory: sessionmaker[Session] | None = None
_device: str | None = None


def reset_process_state(device: str | None = None) -> None:
    """Forget the engine inherited from the parent (its sockets are the parent's) and set the
    device this child trains on."""
    global _factory, _device
    if _factory is not None:
        engine = _factory.kw.get("bind")
        if engine is not None:
            engine.dispose(close=False)
    _factory = None
    _device = device


def session_factory() -> sessionmaker[Session]:
    global _factory
    if _factory is None:
        _factory = make_session_factory(make_engine(get_settings().database_url))
    return _factory


def load_data(dataset: str) -> CifarArrays:
    return load_cifar(resolve_data_dir(get_settings().data_dir), dataset)


@app.task(name=TRAIN_TASK)
def train_run(run_id: str) -> None:
    """Claim the run's lease (or return), train it, write every epoch; Postgres is the record."""
    settings = get_settings()
    # _device is set per prefork child; with --pool solo there is no fork, and "auto" is safe.
    execute_run(run_id, session_factory(), load_data, _device or settings.device, settings=settings)


@app.task(name=REAP_TASK)
def reap_lost_runs() -> list[str]:
    """Requeue runs whose lease expired and resend stale queued runs to the broker."""
    return reap(session_factory(), CeleryDispatcher(app), get_settings())
