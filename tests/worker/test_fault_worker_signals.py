"""Faults survived, with real processes: a Celery worker killed outright mid-epoch, and one
told to stop (SIGTERM to its main process, as Kubernetes evicts a pod). Real API (uvicorn),
Redis, PostgreSQL and `gradlab worker`/`gradlab reaper` processes, real CIFAR-100."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import TrainingResult
from gradlab.store import runs
from gradlab.store.models import Run
from tests.support.processes import ServiceProcess, wait_for
from tests.worker.conftest import start_reaper, start_worker
from tests.worker.reference_run import EPOCHS, assert_matches_reference, spec_named, stored

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _submit(http: httpx.Client, name: str) -> str:
    response = http.post("/experiments", json=spec_named(name))
    assert response.status_code == 201, response.text
    return str(response.json()["runs"][0]["id"])


def _run(store: sessionmaker[Session], run_id: str) -> Run:
    with store() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def _wait_epochs(store: sessionmaker[Session], run_id: str, epochs: int,
                 worker: ServiceProcess, interval: float = 0.5) -> Run:
    def reached() -> Run | None:
        run = _run(store, run_id)
        return run if run.status == "running" and run.epochs_done >= epochs else None

    return wait_for(f"{epochs} epoch(s) of run {run_id}", reached, 300, service=worker,
                    interval=interval)


def _wait_status(store: sessionmaker[Session], run_id: str, status: str,
                 worker: ServiceProcess, timeout: float = 400) -> Run:
    def reached() -> Run | None:
        run = _run(store, run_id)
        return run if run.status == status else None

    return wait_for(f"run {run_id} to be {status}", reached, timeout, service=worker)


def test_a_worker_killed_mid_epoch_resumes_on_another_worker_identical_to_an_uninterrupted_run(
    service_env: dict[str, str], http: httpx.Client, store: sessionmaker[Session],
    reference: TrainingResult, tmp_path: Path,
) -> None:
    reaper = start_reaper(service_env, tmp_path)
    first = start_worker(service_env, tmp_path, "worker-a")
    second: ServiceProcess | None = None
    try:
        run_id = _submit(http, "kill-9")
        before = _wait_epochs(store, run_id, 2, first)
        first.signal(signal.SIGKILL)  # main process and its child, no chance to clean up
        first.proc.wait(10)
        assert before.epochs_done < EPOCHS
        with store() as session:
            checkpoint = runs.latest_checkpoint(session, run_id)
        assert checkpoint is not None
        # Only now does another worker exist: the reaper finds the run by its expired lease.
        second = start_worker(service_env, tmp_path, "worker-b")
        done = _wait_status(store, run_id, "succeeded", second)
        assert done.attempt == 2
        assert done.environment["worker"] != before.worker  # another worker finished it
        assert done.environment["resumed_from_epoch"] >= checkpoint.epoch
        assert_matches_reference(store, run_id, reference)
    finally:
        for process in (second, first, reaper):
            if process is not None:
                process.stop()


# The mid-epoch case needs the epoch in progress to outlast the grace on any machine: a grace
# under the hand-back margin (worker/shutdown.py) leaves no time to wait for a safe point, the
# signal comes as the second (and last) epoch starts, and that epoch trains 4x the reference's
# images (a few seconds here, a second on a fast machine, against the watcher's 0.2 s). Two
# epochs suffice: one finished before the signal, the one cut short and redone after it.
LONG_EPOCHS = {"hyperparameters": {"epochs": 2},
               "data": {"train_limit": 6000, "val_limit": 100, "test_limit": 100}}


@pytest.mark.parametrize(
    ("grace", "where", "changes"),
    # a grace far longer than any epoch here, however loaded the machine; and one shorter
    [(300.0, "at the end of an epoch", {}), (1.0, "mid-epoch", LONG_EPOCHS)],
    ids=["safe-point-in-time", "grace-shorter-than-an-epoch"],
)
def test_sigterm_hands_the_run_back_at_once_within_the_grace_period(
    service_env: dict[str, str], http: httpx.Client, store: sessionmaker[Session],
    reference: TrainingResult, tmp_path: Path, grace: float, where: str,
    changes: dict[str, Any],
) -> None:
    # A lease far longer than the test and no reaper: only the hand-back can move the run.
    env: dict[str, Any] = {**service_env, "GRADLAB_LEASE_SECONDS": "3600",
                           "GRADLAB_SHUTDOWN_GRACE_SECONDS": str(grace)}
    first = start_worker(env, tmp_path, "evicted")
    second: ServiceProcess | None = None
    try:
        response = http.post("/experiments", json=spec_named(f"sigterm-{where}", **changes))
        assert response.status_code == 201, response.text
        run_id = str(response.json()["runs"][0]["id"])
        before = _wait_epochs(store, run_id, 1, first, interval=0.05)
        os.kill(first.proc.pid, signal.SIGTERM)  # the main process only, as Kubernetes does
        first.proc.wait(grace + 30)  # (fails the test if the worker outlives its grace)
        assert f"handed back {where}" in first.log_tail(50_000)
        handed = _run(store, run_id)
        assert (handed.status, handed.worker, handed.attempt) == ("queued", None, 0)
        assert handed.updated_at < before.lease_expires_at  # no wait for the lease
        with store() as session:
            checkpoint = runs.latest_checkpoint(session, run_id)
        assert checkpoint is not None and checkpoint.epoch == handed.epochs_done - 1
        # The message was sent again on the way out: a new worker resumes the run at once.
        second = start_worker(env, tmp_path, "replacement")
        done = _wait_status(store, run_id, "succeeded", second)
        assert done.attempt == 1  # the handed-back attempt did not count
        assert done.environment["resumed_from_epoch"] == checkpoint.epoch
        if changes:  # every epoch once, the one cut short redone by the replacement
            metrics, _ = stored(store, run_id)
            assert [m[0] for m in metrics] == list(range(done.epochs_done))
            assert done.epochs_done == changes["hyperparameters"]["epochs"]
        else:  # bit for bit the uninterrupted run
            assert_matches_reference(store, run_id, reference)
    finally:
        for process in (second, first):
            if process is not None:
                process.stop()
