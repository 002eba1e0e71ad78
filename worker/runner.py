"""Train one run from the database: the body shared by the Celery task and the local worker.

Never trusts whoever handed it the run id: the database lease decides whether this process
trains it, the checkpoint the database references (bytes checked against their SHA-256)
decides where it starts, and every epoch is written (metrics, gradient flow, the reference to
a checkpoint saved at the cadence of ``checkpointing``, progress) in one transaction fenced on
the lease.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays
from gradlab.observability.logs import bind_log_context
from gradlab.science.records import EpochCallback, EpochMetrics, GradFlowEpoch, TrainingResult
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import Settings, get_settings
from gradlab.store import runs
from gradlab.store.checkpoint_store import (
    CheckpointIntegrityError,
    CheckpointStore,
    open_checkpoint_store,
)
from gradlab.store.session import session_scope
from gradlab.worker import metrics as worker_metrics
from gradlab.worker.checkpointing import CheckpointCadence, RunCheckpoints, cadence_for

log = logging.getLogger(__name__)

DataSource = Callable[[str], CifarArrays]
# gradlab.core.training_loop.fit, or a stand-in with its signature (bench/cluster_sim.py).
FitFunction = Callable[..., TrainingResult]
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


def _requeue_on_shutdown(factory: sessionmaker[Session], run_id: str, owner: str) -> None:
    """Put the run back in the queue (this attempt not counted) when the process is told to
    stop, so another worker resumes it from its checkpoint without waiting for the lease."""
    try:
        with session_scope(factory) as session:
            runs.requeue_running(session, run_id, owner=owner, refund_attempt=True)
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


@dataclass
class _Prepared:
    """A claimed run, ready to train: its spec, data, device and where it resumes from."""

    claimed: runs.ClaimedRun
    spec: ExperimentSpec
    arrays: CifarArrays
    device: str
    resume_from: bytes | None
    environment: dict[str, Any]


def execute_run(
    run_id: str,
    session_factory: sessionmaker[Session],
    data: DataSource,
    device: str,
    *,
    settings: Settings | None = None,
    worker: str | None = None,
    checkpoints: CheckpointStore | None = None,
    cadence: CheckpointCadence | None = None,
    fit_function: FitFunction | None = None,
) -> str | None:
    """Claim and train ``run_id``; return its final status, or None if it was not ours.

    ``data(dataset)`` returns the arrays (loaded once per process by the caller's cache).
    ``checkpoints``: the store (default: the one the settings name); ``cadence``: when to
    checkpoint (default ``checkpointing.cadence_for`` the device); ``fit_function``: the
    training loop (default ``gradlab.core.training_loop.fit``).
    """
    settings = settings or get_settings()
    checkpoints = checkpoints or open_checkpoint_store(settings, session_factory)
    with session_scope(session_factory) as session:
        claimed = runs.claim_run(
            session,
            run_id,
            worker or worker_name(),
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
    if claimed is None:
        log.info("run %s is not claimable (finished, leased elsewhere, or missing)", run_id)
        return None
    bind_log_context(experiment_id=claimed.experiment_id, run_id=run_id, attempt=claimed.attempt)
    log.info("claimed run %s (attempt %d) as %s", run_id, claimed.attempt, claimed.owner)
    # From the claim on: loading the data and the checkpoint may take longer than a lease.
    beat = _Heartbeat(session_factory, run_id, claimed.owner, settings.lease_seconds)
    beat.start()
    try:
        prepared = _prepare(session_factory, claimed, data, device, checkpoints)
        if isinstance(prepared, str):
            return prepared
        run_checkpoints = RunCheckpoints(
            session_factory,
            checkpoints,
            claimed,
            cadence or cadence_for(prepared.device, settings),
            last_epoch=prepared.spec.hyperparameters.epochs - 1,
        )
        outcome = _train(session_factory, prepared, settings.lease_seconds, beat,
                         run_checkpoints, fit_function)
    finally:
        beat.stop()
    if isinstance(outcome, TrainingResult):
        return _record_outcome(session_factory, prepared, outcome)
    return outcome


def _prepare(
    factory: sessionmaker[Session],
    claimed: runs.ClaimedRun,
    data: DataSource,
    device: str,
    checkpoints: CheckpointStore,
) -> _Prepared | str:
    """Everything the run needs before its first epoch, or its final status when it cannot
    (or need not) train: an invalid stored spec, a cancel, missing data or device."""
    from gradlab.core.environment import describe_environment, resolve_device

    run_id, owner = claimed.run_id, claimed.owner
    try:
        spec = ExperimentSpec.model_validate(claimed.spec)
    except ValidationError as exc:
        return _fail(factory, run_id, owner, f"the stored spec is invalid: {exc}")
    with session_scope(factory) as session:
        if runs.cancel_requested(session, run_id):
            runs.finish_run(session, run_id, "cancelled", owner=owner)
            return "cancelled"
        reference = runs.latest_checkpoint(session, run_id)
    try:
        arrays = data(spec.data.dataset)
        resolved = resolve_device(device)
    except (OSError, ValueError) as exc:
        return _fail(factory, run_id, owner, f"{type(exc).__name__}: {exc}")
    environment: dict[str, Any] = {
        **describe_environment(resolved),
        "worker": owner,
        "attempt": claimed.attempt,
        "git_revision": _git_revision(),
        "resumed_from_epoch": None,
    }
    resume_from = None
    if reference is not None:
        try:
            resume_from = checkpoints.load(reference)
            environment["resumed_from_epoch"] = reference.epoch
        except CheckpointIntegrityError as exc:
            # Never resume from bytes that are not the ones committed: start over (on the CPU
            # the replayed epochs write the same numbers again).
            log.warning("run %s starts over: %s", run_id, exc)
            environment["checkpoint_rejected"] = str(exc)
    with session_scope(factory) as session:
        runs.set_environment(session, run_id, environment)
    return _Prepared(claimed, spec, arrays, str(resolved), resume_from, environment)


def _epoch_writer(
    factory: sessionmaker[Session],
    claimed: runs.ClaimedRun,
    lease: int,
    beat: _Heartbeat,
    family: str,
    checkpoints: RunCheckpoints,
) -> EpochCallback:
    """The callback that writes each finished epoch (metrics, gradient flow, the reference to
    its checkpoint when one is due, progress) in one transaction fenced on the lease, after
    the checkpoint's bytes; False (stop) once a cancel is asked."""
    run_id, owner = claimed.run_id, claimed.owner

    def on_epoch_end(
        metrics: EpochMetrics, gradflow: GradFlowEpoch, make_checkpoint: Callable[[], bytes]
    ) -> bool:
        if beat.lost.is_set():
            raise runs.LeaseLostError(f"run {run_id} is no longer leased to {owner}")
        started = time.perf_counter()  # the write: checkpoint bytes (when due), then the rows
        reference = checkpoints.at_epoch_end(metrics.epoch, make_checkpoint)

        def write() -> bool:
            with session_scope(factory) as session:
                runs.record_epoch(
                    session, run_id, metrics, gradflow, reference, owner=owner,
                    lease_seconds=lease,
                )
                return runs.cancel_requested(session, run_id)

        cancelled = _retrying(write, f"epoch {metrics.epoch} of run {run_id}")
        if reference is not None:
            checkpoints.committed(reference)
        worker_metrics.EPOCH_WRITE_SECONDS.labels(family).observe(time.perf_counter() - started)
        worker_metrics.EPOCH_SECONDS.labels(family).observe(metrics.seconds)
        return not cancelled

    return on_epoch_end


def _train(
    factory: sessionmaker[Session],
    prepared: _Prepared,
    lease: int,
    beat: _Heartbeat,
    checkpoints: RunCheckpoints,
    fit_function: FitFunction | None,
) -> TrainingResult | str | None:
    """Train under the heartbeat: the result, "failed" (recorded) when training raised, or
    None when the lease moved on. The last finished epoch's checkpoint is saved at the end and
    at a stop (SIGTERM, Ctrl-C), which then puts the run back in the queue and re-raises."""
    if fit_function is None:
        from gradlab.core.training_loop import fit as fit_function

    claimed = prepared.claimed
    run_id, owner = claimed.run_id, claimed.owner
    try:
        result = fit_function(
            prepared.spec,
            claimed.seed,
            prepared.arrays,
            device=prepared.device,
            on_epoch_end=_epoch_writer(factory, claimed, lease, beat, prepared.spec.model_family,
                                       checkpoints),
            resume_from=prepared.resume_from,
        )
        checkpoints.save_pending(result.status)
        return result
    except runs.LeaseLostError as exc:
        log.warning("%s; leaving the run to its new owner", exc)
        return None
    except (KeyboardInterrupt, SystemExit):
        checkpoints.save_pending("shutdown")
        _requeue_on_shutdown(factory, run_id, owner)
        raise
    except Exception as exc:
        log.exception("run %s failed", run_id)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        return _fail(factory, run_id, owner, detail)


def _record_outcome(
    factory: sessionmaker[Session], prepared: _Prepared, result: TrainingResult
) -> str | None:
    run_id = prepared.claimed.run_id
    environment = {**prepared.environment, **result.environment}

    def finish() -> bool:
        with session_scope(factory) as session:
            return runs.finish_run(
                session,
                run_id,
                result.status,
                owner=prepared.claimed.owner,
                test=result.test,
                divergence=result.divergence,
                environment=environment,
            )

    if not _retrying(finish, f"the outcome of run {run_id}"):
        log.warning("run %s finished here but its lease had moved on; result dropped", run_id)
        return None
    worker_metrics.RUNS_FINISHED.labels(prepared.spec.model_family, result.status).inc()
    log.info("run %s %s", run_id, result.status)
    return result.status
