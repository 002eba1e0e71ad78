"""End to end on real services: the API (uvicorn, HTTP) -> Redis -> a Celery worker process
(prefork) -> PostgreSQL, training on a small slice of the real CIFAR-100: cancel, a killed worker,
a lost run. (VGG38's vanishing gradients, end to end: test_celery_gradients.py.)"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store import runs
from gradlab.store.models import EpochMetricsRow, Run
from tests.support.processes import ServiceProcess, wait_for
from tests.worker.celery_api import SLICE, post, spec, wait_status

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_cancel_is_seen_within_one_epoch_and_keeps_the_checkpoint(
    celery_worker: ServiceProcess, http: httpx.Client, store: sessionmaker[Session]
) -> None:
    created = post(http, spec("e2e-cancel", hyperparameters={"epochs": 200}))
    run_id = created["runs"][0]["id"]

    def trained_an_epoch() -> int | None:
        run = http.get(f"/experiments/{created['id']}").json()["runs"][0]
        return run["epochs_done"] or None

    wait_for("the first epoch", trained_an_epoch, 120, service=celery_worker)
    cancel = http.post(f"/experiments/{created['id']}/cancel")
    assert cancel.status_code == 200, cancel.text
    seen = cancel.json()["runs"][0]["epochs_done"]

    done = wait_status(http, created["id"], {"cancelled", "succeeded", "failed"}, 60,
                       celery_worker)
    assert done["status"] == "cancelled"
    run = done["runs"][0]
    assert run["status"] == "cancelled"
    # The epoch in progress when cancel arrived may finish. If the cancel committed while the
    # worker was writing an epoch whose cancel check had already passed (so `seen` is one
    # behind), the next epoch is where it is seen: never more than one full epoch after.
    assert seen <= run["epochs_done"] <= seen + 2
    with store() as session:
        checkpoint = runs.latest_checkpoint(session, run_id)
        assert checkpoint is not None and checkpoint.epoch == run["epochs_done"] - 1


def test_a_killed_workers_run_is_found_by_its_lease_and_resumes_from_its_checkpoint(
    celery_worker: ServiceProcess, http: httpx.Client, store: sessionmaker[Session]
) -> None:
    epochs = 6
    created = post(http, spec("e2e-kill", hyperparameters={"epochs": epochs},
                                data={**SLICE, "train_limit": 1000}))
    run_id = created["runs"][0]["id"]

    def two_epochs_written() -> Run | None:
        with store() as session:
            run = session.get(Run, run_id)
            return run if run is not None and run.epochs_done >= 2 else None

    before = wait_for("two epochs", two_epochs_written, 120, service=celery_worker)
    pid = int(before.worker.rsplit("#", 1)[0].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)  # the pool child training it, mid-run

    done = wait_status(http, created["id"], {"succeeded", "failed"}, 180, celery_worker)
    assert done["status"] == "succeeded", done
    with store() as session:
        run = session.get(Run, run_id)
        assert run.attempt == 2
        assert run.environment["resumed_from_epoch"] >= before.epochs_done - 1
        epochs_written = session.scalars(
            select(EpochMetricsRow.epoch).where(EpochMetricsRow.run_id == run_id)
            .order_by(EpochMetricsRow.epoch)
        ).all()
        assert epochs_written == list(range(epochs))  # every epoch once, none twice
        assert runs.latest_checkpoint(session, run_id).epoch == epochs - 1
    assert celery_worker.alive()


def test_a_lost_run_is_requeued_while_the_only_worker_child_is_busy_training(
    celery_worker: ServiceProcess, http: httpx.Client, store: sessionmaker[Session]
) -> None:
    # The reaper's messages have a queue of their own, consumed by `gradlab reaper`: they do
    # not wait behind runs while every worker child trains.
    busy = post(http, spec("e2e-busy", hyperparameters={"epochs": 200}))
    lost = post(http, spec("e2e-lost"))
    lost_run = lost["runs"][0]["id"]

    def training_busy() -> bool:
        run = http.get(f"/experiments/{busy['id']}").json()["runs"][0]
        return run["status"] == "running"

    wait_for("the only child to train", training_busy, 120, service=celery_worker)
    with store() as session:  # a worker on another machine died while training this run
        session.execute(update(Run).where(Run.id == lost_run).values(
            status="running", worker="gone-host:1#1", attempt=1,
            lease_expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        session.commit()

    def requeued() -> bool:
        with store() as session:
            return session.get(Run, lost_run).status == "queued"

    wait_for("the reaper to requeue the lost run", requeued, 60, service=celery_worker)
    still = http.get(f"/experiments/{busy['id']}").json()["runs"][0]
    assert still["status"] == "running"  # the child never stopped training
    for experiment in (busy, lost):
        assert http.post(f"/experiments/{experiment['id']}/cancel").status_code == 200
    wait_status(http, busy["id"], {"cancelled"}, 120, celery_worker)
