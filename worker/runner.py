"""Train one run from the database: the body shared by the Celery task and the local worker.

Never trusts whoever handed it the run id: the database lease decides whether this process
trains it, the checkpoint in the database decides where it starts, and every epoch is written
(metrics, gradient flow, checkpoint, progress) in one transaction fenced on the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays
from gradlab.observability.logs import bind_log_context
from gradlab.science.records import EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import Settings, get_settings
from gradlab.store import runs
from gradlab.store.models import Run
from gradlab.store.session import session_scope
from gradlab.worker import metrics as worker_metrics

log = logging.getLogger(__name__)

DataSource = Callable[[str], CifarArrays]
T = TypeVar("T")
# Pauses between retries of an epoch or outcome write whose connection was lost.
WRITE_RETRY_PAUSES = (1.0, 3.0, 10.0)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _git_revision() -> str | None:
    if os.environ.get("GRADLAB_GIT_REVISION"):
        return os.environ["GRADLAB_GIT_REVISION"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class _Heartbeat(threading.Thread):
    """Renews the lease while an epoch trains; notices when the lease was lost."""

    def __init__(self, factory: sessionmaker[Session], run_id: str, owner: str, lease: int):
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self._factory, self._run_id, self._owner, self._lease = factory, run_id, owner, lease
        self._stop = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        interval = max(0.5, self._lease / 3)
        while not self._stop.wait(interval):
            try:
                with session_scope(self._factory) as session:
                    alive = runs.heartbeat(
                        session, self._run_id, self._owner, lease_seconds=self._lease
                    )
            except Exception as exc:  # a database blip: try again next beat, lease has slack
                log.warning("heartbeat for run %s failed: %s", self._run_id, exc)
                worker_metrics.HEARTBEATS.labels("failed").inc()
                continue
            worker_metrics.HEARTBEATS.labels("ok" if alive else "lost").inc()
            if not alive:
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop.set()


def _release_on_shutdown(factory: sessionmaker[Session], run_id: str, owner: str) -> None:
    """Hand the run back (queued, this attempt not counted) when the process is told to stop."""
    try:
        with session_scope(factory) as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.worker == owner, Run.status == "running")
                .values(
                    status="queued", worker=None, lease_expires_at=None, attempt=Run.attempt - 1
                )
                .execution_options(synchronize_session=False)
            )
    except Exception as exc:  # the lease expires on its own; the reaper takes it from there
        log.warning("could not release run %s on shutdown: %s", run_id, exc)


def _retrying(write: Callable[[], T], what: str) -> T:
    """Run an idempotent write, retrying a lost connection (a database restart or failover)
    a few times: an epoch took minutes to train, a failover takes seconds."""
    for attempt, pause in enumerate(WRITE_RETRY_PAUSES):
        try:
            return write()
        except OperationalError as exc:
            log.warning("writing %s failed (%s); retry %d in %.0f s", what, exc, attempt + 1, pause)
            time.sleep(pause)
    return write()


def _fail(factory: sessionmaker[Session], run_id: str, owner: str, error: str) -> str:
    with session_scope(factory) as session:
        runs.finish_run(session, run_id, "failed", owner=owner, error=error)
    return "failed"


def execute_run(
    run_id: str,
    session_factory: sessionmaker[Session],
    data: DataSource,
    device: str,
    *,
    settings: Settings | None = None,
    worker: str | None = None,
) -> str | None:
    """Claim and train ``run_id``; return its final status, or None if it was not ours.

    ``data(dataset)`` returns the arrays (loaded once per process by the caller's cache).
    """
    from gradlab.core.environment import describe_environment, resolve_device
    from gradlab.core.training_loop import train_run

    settings = settings or get_settings()
    lease = settings.lease_seconds
    with session_scope(session_factory) as session:
        claimed = runs.claim_run(
            session,
            run_id,
            worker or worker_name(),
            lease_seconds=lease,
            max_attempts=settings.max_attempts,
        )
    if claimed is None:
        log.info("run %s is not claimable (finished, leased elsewhere, or missing)", run_id)
        return None
    owner = claimed.owner
    bind_log_context(experiment_id=claimed.experiment_id, run_id=run_id, attempt=claimed.attempt)
    log.info("claimed run %s (attempt %d) as %s", run_id, claimed.attempt, owner)

    try:
        spec = ExperimentSpec.model_validate(claimed.spec)
    except ValidationError as exc:
        return _fail(session_factory, run_id, owner, f"the stored spec is invalid: {exc}")

    with session_scope(session_factory) as session:
        if runs.cancel_requested(session, run_id):
            runs.finish_run(session, run_id, "cancelled", owner=owner)
            return "cancelled"
        checkpoint = runs.latest_checkpoint(session, run_id)

    try:
        arrays = data(spec.data.dataset)
        resolved = resolve_device(device)
    except (OSError, ValueError) as exc:
        return _fail(session_factory, run_id, owner, f"{type(exc).__name__}: {exc}")

    environment: dict[str, Any] = {
        **describe_environment(resolved),
        "worker": owner,
        "attempt": claimed.attempt,
        "git_revision": _git_revision(),
        "resumed_from_epoch": None if checkpoint is None else checkpoint.epoch,
    }
    with session_scope(session_factory) as session:
        runs.set_environment(session, run_id, environment)

    beat = _Heartbeat(session_factory, run_id, owner, lease)

    def on_epoch_end(
        metrics: EpochMetrics, gradflow: GradFlowEpoch, make_checkpoint: Callable[[], bytes]
    ) -> bool:
        if beat.lost.is_set():
            raise runs.LeaseLostError(f"run {run_id} is no longer leased to {owner}")
        blob = make_checkpoint()

        def write() -> bool:
            with session_scope(session_factory) as session:
                runs.record_epoch(
                    session, run_id, metrics, gradflow, blob, owner=owner, lease_seconds=lease
                )
                return runs.cancel_requested(session, run_id)

        started = time.perf_counter()
        cancelled = _retrying(write, f"epoch {metrics.epoch} of run {run_id}")
        worker_metrics.EPOCH_WRITE_SECONDS.labels(spec.model_family).observe(
            time.perf_counter() - started
        )
        worker_metrics.EPOCH_SECONDS.labels(spec.model_family).observe(metrics.seconds)
        return not cancelled

    beat.start()
    try:
        result = train_run(
            spec,
            claimed.seed,
            arrays,
            device=str(resolved),
            on_epoch_end=on_epoch_end,
            resume_from=None if checkpoint is None else checkpoint.data,
        )
    except runs.LeaseLostError as exc:
        log.warning("%s; leaving the run to its new owner", exc)
        return None
    except (KeyboardInterrupt, SystemExit):
        _release_on_shutdown(session_factory, run_id, owner)
        raise
    except Exception as exc:
        log.exception("run %s failed", run_id)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return _fail(session_factory, run_id, owner, detail)
    finally:
        beat.stop()

    environment.update(result.environment)

    def finish() -> bool:
        with session_scope(session_factory) as session:
            return runs.finish_run(
                session,
                run_id,
                result.status,
                owner=owner,
                test=result.test,
                divergence=result.divergence,
                environment=environment,
            )

    finished = _retrying(finish, f"the outcome of run {run_id}")
    if not finished:
        log.warning("run %s finished here but its lease had moved on; result dropped", run_id)
        return None
    worker_metrics.RUNS_FINISHED.labels(spec.model_family, result.status).inc()
    log.info("run %s %s", run_id, result.status)
    return result.status
