"""One attempt at one run on this worker: from its claim to how it ended.

An ``Attempt`` owns the run's lease (a heartbeat renews it from the claim on: loading the data
and the checkpoint may take longer than a lease), what it trains from (the stored spec, the
data, the checkpoint the database references, its bytes checked against their SHA-256), its
checkpoints at their cadence (``checkpointing``), the epoch writer, and every way it can end
(``AttemptOutcome``): the outcome recorded, a failure, a hand-back to the queue, or the lease
lost. It trains inside a ``PackAttempt`` (a run alone is a pack of one); nothing of its own
is passed back through anyone else's dict.

Each epoch is written (metrics, gradient flow, the reference to a checkpoint saved at the
cadence, progress) in one transaction fenced on the lease, after the checkpoint's bytes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays
from gradlab.science.records import (
    CheckpointThunk,
    EpochCallback,
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.store.checkpoint_store import CheckpointIntegrityError, CheckpointStore
from gradlab.store.session import session_scope
from gradlab.worker import metrics as worker_metrics
from gradlab.worker.checkpointing import CheckpointCadence, RunCheckpoints, cadence_for
from gradlab.worker.failures import FailureKind, classify, describe
from gradlab.worker.heartbeat import Heartbeat
from gradlab.worker.outcomes import AttemptOutcome

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DataSource = Callable[[str], CifarArrays]
# The decision a pack takes once per epoch boundary for all its members (``PackAttempt``).
BoundaryDecision = Callable[[int], EpochDecision]
T = TypeVar("T")
# Pauses between retries of an epoch or outcome write whose connection was lost: a minute in
# all, enough for a database restart or failover; an epoch took minutes to train.
WRITE_RETRY_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def git_revision() -> str | None:
    """The code's revision, for the run's reproducibility record (images set it)."""
    if os.environ.get("GRADLAB_GIT_REVISION"):
        return os.environ["GRADLAB_GIT_REVISION"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def retrying(write: Callable[[], T], what: str) -> T:
    """Run an idempotent write, retrying a lost connection (a database restart or failover)
    for about a minute: an epoch took minutes to train, a failover takes seconds."""
    for attempt, pause in enumerate(WRITE_RETRY_PAUSES):
        try:
            return write()
        except OperationalError as exc:
            log.warning("writing %s failed (%s); retry %d in %.0f s", what, exc, attempt + 1, pause)
            time.sleep(pause)
    return write()


class Attempt:
    """One claimed run: see the module docstring. ``outcome`` is None until it ended."""

    def __init__(self, claimed: runs.ClaimedRun, factory: sessionmaker[Session],
                 settings: WorkerSettings, store: CheckpointStore,
                 cadence: CheckpointCadence | None = None) -> None:
        self.claimed, self._factory, self._settings = claimed, factory, settings
        self._store, self._cadence = store, cadence
        self.outcome: AttemptOutcome | None = None
        self.heartbeat = Heartbeat(factory, claimed.run_id, claimed.owner,
                                   settings.lease_seconds)
        self.heartbeat.start()
        # Set by ``prepare``:
        self.spec: ExperimentSpec | None = None
        self.arrays: CifarArrays | None = None
        self.device = "cpu"
        self.resume_from: bytes | None = None
        self.resumed_from_epoch: int | None = None
        self.environment: dict[str, Any] = {}
        self.checkpoints: RunCheckpoints | None = None
        self._stopped_at_boundary = False
        # Stopped mid-epoch: the epoch in progress was discarded.
        self.cut_short = False

    @property
    def run_id(self) -> str:
        return self.claimed.run_id

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    def close(self) -> None:
        self.heartbeat.stop()

    def _end(self, outcome: AttemptOutcome) -> AttemptOutcome:
        self.outcome = outcome
        return outcome

    # --- before training ------------------------------------------------------------------

    def prepare(self, data: DataSource, device: str) -> bool:
        """Everything the run needs before its first epoch; False when it ended instead: an
        invalid stored spec (failed), a cancel, data or device missing on this worker (an
        infrastructure failure: queued again while attempts are left)."""
        from gradlab.core.environment import describe_environment, resolve_device

        try:
            spec = ExperimentSpec.model_validate(self.claimed.spec)
        except ValidationError as exc:
            self._fail_final(f"the stored spec is invalid: {exc}")
            return False
        with session_scope(self._factory) as session:
            if runs.cancel_requested(session, self.run_id):
                runs.finish_run(session, self.run_id, "cancelled", owner=self.claimed.owner)
                self._end(AttemptOutcome.CANCELLED)
                return False
            reference = runs.latest_checkpoint(session, self.run_id)
        try:
            self.arrays = data(spec.data.dataset)
            resolved = resolve_device(device)
        except (OSError, ValueError) as exc:  # this worker's data or device, not the run's
            self._failed("infrastructure", describe(exc))
            return False
        self.spec, self.device = spec, str(resolved)
        self.environment = {**describe_environment(resolved), "worker": self.claimed.owner,
                            "attempt": self.claimed.attempt, "git_revision": git_revision(),
                            "resumed_from_epoch": None}
        if reference is not None:
            try:
                self.resume_from = self._store.load(reference)
                self.resumed_from_epoch = self.environment["resumed_from_epoch"] = reference.epoch
            except CheckpointIntegrityError as exc:
                # Never resume from bytes that are not the ones committed: start over (on the
                # CPU the replayed epochs write the same numbers again).
                log.warning("run %s starts over: %s", self.run_id, exc)
                self.environment["checkpoint_rejected"] = str(exc)
        self.environment["precision"] = self._precision(spec, resolved)
        with session_scope(self._factory) as session:
            runs.set_environment(session, self.run_id, self.environment)
        self.checkpoints = RunCheckpoints(
            self._factory, self._store, self.claimed,
            self._cadence or cadence_for(self.device, self._settings),
            last_epoch=spec.hyperparameters.epochs - 1)
        return True

    def _precision(self, spec: ExperimentSpec, device: torch.device) -> str | None:
        """The precision the run will compute in (a resumed run keeps its checkpoint's); None
        when the checkpoint cannot be read (training then says why)."""
        from gradlab.core.checkpoints import CheckpointError, load_checkpoint
        from gradlab.core.trainer import run_precision

        try:
            payload = None if self.resume_from is None else load_checkpoint(self.resume_from)
        except CheckpointError:
            return None
        return run_precision(spec, device, payload)

    @property
    def resume_epoch(self) -> int:
        """The epoch it resumes after (-1: from the start)."""
        return -1 if self.resumed_from_epoch is None else self.resumed_from_epoch

    def last_epoch_seconds(self) -> float | None:
        """How long its last recorded epoch took (an earlier attempt's, maybe elsewhere)."""
        with self._factory() as session:
            return runs.last_epoch_seconds(session, self.run_id)

    # --- training -------------------------------------------------------------------------

    def epoch_writer(self, boundary: BoundaryDecision) -> EpochCallback:
        """The callback that writes each finished epoch and decides: CANCEL once a cancel is
        asked, STOP when the lease was lost (the run leaves the pack; its new owner has it)
        or when ``boundary`` says so (a stop asked: the run is handed back)."""
        assert self.spec is not None
        family = self.spec.model_family
        last_epoch = self.spec.hyperparameters.epochs - 1

        def on_epoch_end(metrics: EpochMetrics, gradflow: GradFlowEpoch,
                         checkpoint: CheckpointThunk) -> EpochDecision:
            if self.heartbeat.lost.is_set():
                return self._lose(f"run {self.run_id} is no longer leased to "
                                  f"{self.claimed.owner}")
            # Decided before the epoch is written: a stop that comes during the write is met
            # at the next boundary (or the deadline), and a stopping run's checkpoint goes
            # into this epoch's own transaction.
            decision = (EpochDecision.CONTINUE if metrics.epoch >= last_epoch
                        else boundary(metrics.epoch))
            started = time.perf_counter()  # the write: checkpoint bytes (when due), the rows
            try:
                cancel = self._write_epoch(metrics, gradflow, checkpoint,
                                           stopping=decision is EpochDecision.STOP)
            except runs.LeaseLostError as exc:
                return self._lose(str(exc))
            worker_metrics.EPOCH_WRITE_SECONDS.labels(family).observe(
                time.perf_counter() - started)
            worker_metrics.EPOCH_SECONDS.labels(family).observe(metrics.seconds)
            if cancel:
                return EpochDecision.CANCEL
            self._stopped_at_boundary = decision is EpochDecision.STOP
            return decision

        return on_epoch_end

    def _write_epoch(self, metrics: EpochMetrics, gradflow: GradFlowEpoch,
                     make_checkpoint: CheckpointThunk, *, stopping: bool) -> bool:
        """Write the epoch (checkpoint bytes first, when due or ``stopping``); whether a
        cancel was asked."""
        assert self.checkpoints is not None
        checkpoints, run_id, owner = self.checkpoints, self.run_id, self.claimed.owner
        # The checkpoint store may be the database itself: an outage met while writing the
        # bytes is retried like the epoch's rows (a write of the same object is idempotent).
        reference = retrying(
            lambda: checkpoints.at_epoch_end(metrics.epoch, make_checkpoint, due=stopping),
            f"the checkpoint of epoch {metrics.epoch} of run {run_id}")

        def write() -> bool:
            with session_scope(self._factory) as session:
                runs.record_epoch(session, run_id, metrics, gradflow, reference, owner=owner,
                                  lease_seconds=self._settings.lease_seconds)
                return runs.cancel_requested(session, run_id)

        cancel = retrying(write, f"epoch {metrics.epoch} of run {run_id}")
        if reference is not None:
            checkpoints.committed(reference)
        return cancel

    def _lose(self, why: str) -> EpochDecision:
        log.warning("%s; leaving the run to its new owner", why)
        self._end(AttemptOutcome.LOST)
        return EpochDecision.STOP

    # --- how it ends ----------------------------------------------------------------------

    def finish(self, result: TrainingResult) -> AttemptOutcome:
        """After training: a stopped run is handed back at its last finished epoch; any other
        outcome is recorded, with whatever checkpoint is still unsaved."""
        if self.outcome is not None:  # its lease was lost while it trained
            return self.outcome
        assert self.checkpoints is not None
        self.checkpoints.save_pending(str(result.status))
        if result.status is RunOutcome.STOPPED:
            self.cut_short = not self._stopped_at_boundary
            return self.hand_back("mid-epoch" if self.cut_short else "at the end of an epoch")
        return self._record(result)

    def _record(self, result: TrainingResult) -> AttemptOutcome:
        environment = {**self.environment, **result.environment}

        def finish() -> bool:
            with session_scope(self._factory) as session:
                return runs.finish_run(session, self.run_id, result.status,
                                       owner=self.claimed.owner, test=result.test,
                                       divergence=result.divergence, environment=environment)

        if not retrying(finish, f"the outcome of run {self.run_id}"):
            log.warning("run %s finished here but its lease had moved on; result dropped",
                        self.run_id)
            return self._end(AttemptOutcome.LOST)
        family = self.spec.model_family if self.spec is not None else "unknown"
        worker_metrics.RUNS_FINISHED.labels(family, result.status).inc()
        log.info("run %s %s", self.run_id, result.status)
        return self._end(AttemptOutcome(str(result.status)))

    def hand_back(self, where: str) -> AttemptOutcome:
        """Save the last finished epoch if still unsaved, then put the run back in the queue
        with this attempt not counted, so another worker (or the next invocation) resumes it
        from its checkpoint now instead of after the lease."""
        if self.checkpoints is not None:
            self.checkpoints.save_pending("hand-back")
        try:
            with session_scope(self._factory) as session:
                handed = runs.requeue_running(session, self.run_id, owner=self.claimed.owner,
                                              refund_attempt=True)
        except Exception as exc:  # the lease expires on its own; the reaper takes it from there
            log.warning("could not hand back run %s: %s", self.run_id, exc)
            handed = False
        if not handed:
            return self._end(AttemptOutcome.LOST)
        log.warning("run %s handed back %s", self.run_id, where)
        return self._end(AttemptOutcome.HANDED_BACK)

    def fail(self, exc: BaseException) -> AttemptOutcome:
        """Training raised: a failure of the run, or of the infrastructure (retried). (The
        caller logged the traceback, once for the pack.)"""
        kind = classify(exc)
        log.warning("run %s failed (%s failure): %s", self.run_id, kind, describe(exc))
        return self._failed(kind, describe(exc))

    def _fail_final(self, error: str) -> AttemptOutcome:
        with session_scope(self._factory) as session:
            runs.finish_run(session, self.run_id, "failed", owner=self.claimed.owner,
                            error=error)
        return self._end(AttemptOutcome.FAILED)

    def _failed(self, kind: FailureKind, error: str) -> AttemptOutcome:
        """A failure of the run is final; an infrastructure failure queues the run again while
        attempts are left (the attempt counts), else it fails naming the cause."""
        claimed, limit = self.claimed, self._settings.max_attempts
        if kind == "run":
            return self._fail_final(error)
        if claimed.attempt >= limit:
            return self._fail_final(
                f"gave up after {claimed.attempt} attempts; the last failed with {error}")
        note = f"attempt {claimed.attempt} failed ({error}); queued again"
        try:
            with session_scope(self._factory) as session:
                requeued = runs.requeue_running(session, self.run_id, owner=claimed.owner,
                                                error=note)
        except Exception as exc:  # the database itself is away: the lease expires, reaper acts
            log.warning("could not queue run %s again (%s); its lease will expire",
                        self.run_id, exc)
            return self._end(AttemptOutcome.LOST)
        log.warning("run %s: %s", self.run_id, note)
        return self._end(AttemptOutcome.HANDED_BACK if requeued else AttemptOutcome.LOST)
