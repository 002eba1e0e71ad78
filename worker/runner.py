"""Train one run from the database: the body shared by the Celery task and the local worker.

Never trusts whoever handed it the run id: the database lease decides whether this process
trains it, the checkpoint the database references (bytes checked against their SHA-256)
decides where it starts, and every epoch is written (metrics, gradient flow, the reference to
a checkpoint saved at the cadence of ``checkpointing``, progress) in one transaction fenced on
the lease.

How a run can end here: its outcome (succeeded, diverged, cancelled); ``failed`` for a failure
of the run itself; ``queued`` when it goes back to the queue, either handed back because the
worker is stopping (``worker.shutdown``; the attempt is not counted, the last finished epoch
is checkpointed first) or after an infrastructure failure with attempts left
(``worker.failures``); None when it was not this worker's to train (or its lease moved on).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays
from gradlab.core.environment import resolve_device
from gradlab.observability.logs import bind_log_context
from gradlab.science.records import (
    EpochCallback,
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    TrainingResult,
)
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
from gradlab.worker.failures import FailureKind, classify, describe
from gradlab.worker.shutdown import GracefulStop, StopRequested

log = logging.getLogger(__name__)

DataSource = Callable[[str], CifarArrays]
# gradlab.core.training_loop.fit, or a stand-in with its signature (bench/cluster_sim.py).
FitFunction = Callable[..., TrainingResult]
T = TypeVar("T")
# Pauses between retries of an epoch or outcome write whose connection was lost: a minute in
# all, enough for a database restart or failover; an epoch took minutes to train.
WRITE_RETRY_PAUSES = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
HANDED_BACK = "queued"


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


def _requeue_on_shutdown(factory: sessionmaker[Session], run_id: str, owner: str) -> bool:
    """Put the run back in the queue (this attempt not counted) when the process is told to
    stop, so another worker resumes it from its checkpoint without waiting for the lease."""
    for _ in range(2):  # a stray interrupt from the grace watcher must not lose the hand-back
        try:
            with session_scope(factory) as session:
                return runs.requeue_running(session, run_id, owner=owner, refund_attempt=True)
        except KeyboardInterrupt:
            continue
        except Exception as exc:  # the lease expires on its own; the reaper takes it from there
            log.warning("could not release run %s on shutdown: %s", run_id, exc)
            return False
    return False


def _retrying(write: Callable[[], T], what: str) -> T:
    """Run an idempotent write, retrying a lost connection (a database restart or failover)
    for about a minute: an epoch took minutes to train, a failover takes seconds."""
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


def _failed(
    factory: sessionmaker[Session], claimed: runs.ClaimedRun, kind: FailureKind, error: str,
    max_attempts: int,
) -> str | None:
    """Record a failure: a failure of the run is final; an infrastructure failure queues the
    run again while attempts are left (the attempt counts), else it fails naming the cause."""
    run_id, owner = claimed.run_id, claimed.owner
    if kind == "run":
        return _fail(factory, run_id, owner, error)
    if claimed.attempt >= max_attempts:
        return _fail(factory, run_id, owner,
                     f"gave up after {claimed.attempt} attempts; the last failed with {error}")
    note = f"attempt {claimed.attempt} failed ({error}); queued again"
    try:
        with session_scope(factory) as session:
            requeued = runs.requeue_running(session, run_id, owner=owner, error=note)
    except Exception as exc:  # the database itself is away: the lease expires, the reaper acts
        log.warning("could not queue run %s again (%s); its lease will expire", run_id, exc)
        return None
    log.warning("run %s: %s", run_id, note)
    return HANDED_BACK if requeued else None


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
    stop: GracefulStop | None = None,
    outcomes: dict[str, str | None] | None = None,
) -> str | None:
    """Claim and train ``run_id``; return how it ended here (see the module docstring).

    With a pack size above 1 (``pack_size_on`` the device; and the default training loop) the
    claim also takes up to ``pack_size - 1`` queued runs that fuse with it
    (``runs.claim_companions``) and trains them as one pack; ``outcomes`` (when given)
    receives how every run it trained ended, the companions' too (a caller sends the ones
    handed back to the queue again).

    ``data(dataset)`` returns the arrays (loaded once per process by the caller's cache).
    ``checkpoints``: the store (default: the one the settings name); ``cadence``: when to
    checkpoint (default ``checkpointing.cadence_for`` the device); ``fit_function``: the
    training loop (default ``gradlab.core.training_loop.fit``); ``stop``: the process's stop
    request, checked at every safe point.
    """
    settings = settings or get_settings()
    checkpoints = checkpoints or open_checkpoint_store(settings, session_factory)
    worker = worker or worker_name()
    with session_scope(session_factory) as session:
        claimed = runs.claim_run(
            session,
            run_id,
            worker,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
    if claimed is None:
        log.info("run %s is not claimable (finished, leased elsewhere, or missing)", run_id)
        return None
    bind_log_context(experiment_id=claimed.experiment_id, run_id=run_id, attempt=claimed.attempt)
    log.info("claimed run %s (attempt %d) as %s", run_id, claimed.attempt, claimed.owner)
    outcomes = {} if outcomes is None else outcomes
    companions = _claim_companions(session_factory, claimed, settings, worker, fit_function,
                                   pack_size_on(device, settings))
    if companions:
        return _execute_pack([claimed, *companions], session_factory, data, device,
                             settings=settings, checkpoints=checkpoints, cadence=cadence,
                             stop=stop, outcomes=outcomes)
    status = _execute_claimed(claimed, session_factory, data, device, settings=settings,
                              checkpoints=checkpoints, cadence=cadence,
                              fit_function=fit_function, stop=stop)
    outcomes[run_id] = status
    return status


def _execute_claimed(
    claimed: runs.ClaimedRun,
    session_factory: sessionmaker[Session],
    data: DataSource,
    device: str,
    *,
    settings: Settings,
    checkpoints: CheckpointStore,
    cadence: CheckpointCadence | None,
    fit_function: FitFunction | None,
    stop: GracefulStop | None,
) -> str | None:
    """Train one claimed run alone (``execute_run`` without packing)."""
    run_id = claimed.run_id
    # The lease is renewed from the claim on: loading the data and the checkpoint may take
    # longer than a lease.
    beat = _Heartbeat(session_factory, run_id, claimed.owner, settings.lease_seconds)
    beat.start()
    run_checkpoints: RunCheckpoints | None = None
    try:
        prepared = _prepare(session_factory, claimed, data, device, checkpoints,
                            settings.max_attempts)
        if not isinstance(prepared, _Prepared):
            return prepared
        run_checkpoints = RunCheckpoints(
            session_factory,
            checkpoints,
            claimed,
            cadence or cadence_for(prepared.device, settings),
            last_epoch=prepared.spec.hyperparameters.epochs - 1,
        )
        return _train_and_record(session_factory, prepared, settings, stop, beat,
                                 run_checkpoints, fit_function)
    except (StopRequested, KeyboardInterrupt) as exc:
        _save_at_shutdown(run_checkpoints)
        if stop is None or not stop.requested:
            _requeue_on_shutdown(session_factory, run_id, claimed.owner)  # Ctrl-C
            raise
        stop.begin_hand_back()
        where = "at the end of an epoch" if isinstance(exc, StopRequested) else "mid-epoch"
        handed = _requeue_on_shutdown(session_factory, run_id, claimed.owner)
        log.warning("stopping: run %s handed back %s", run_id, where)
        return HANDED_BACK if handed else None
    except SystemExit:  # told to exit outright: hand the run back on the way out
        _save_at_shutdown(run_checkpoints)
        _requeue_on_shutdown(session_factory, run_id, claimed.owner)
        raise
    finally:
        beat.stop()


def _save_at_shutdown(checkpoints: RunCheckpoints | None) -> None:
    # The last finished epoch, if the cadence had not saved it yet: the run resumes there.
    if checkpoints is not None:
        checkpoints.save_pending("shutdown")


def _train_and_record(
    factory: sessionmaker[Session], prepared: _Prepared, settings: Settings,
    stop: GracefulStop | None, beat: _Heartbeat, checkpoints: RunCheckpoints,
    fit_function: FitFunction | None,
) -> str | None:
    if stop is not None and stop.requested:
        raise StopRequested("asked to stop before training began")
    outcome = _train(factory, prepared, settings, stop, beat, checkpoints, fit_function)
    if isinstance(outcome, TrainingResult):
        return _record_outcome(factory, prepared, outcome)
    return outcome


def _prepare(
    factory: sessionmaker[Session], claimed: runs.ClaimedRun, data: DataSource, device: str,
    checkpoints: CheckpointStore, max_attempts: int,
) -> _Prepared | str | None:
    """Everything the run needs before its first epoch, or how it ended when it cannot (or
    need not) train: an invalid stored spec (failed), a cancel, data or device missing on this
    worker (an infrastructure failure: queued again while attempts are left)."""
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
    except (OSError, ValueError) as exc:  # this worker's data or device, not the run's
        return _failed(factory, claimed, "infrastructure", describe(exc), max_attempts)
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
    stop: GracefulStop | None,
) -> EpochCallback:
    """The callback that writes each finished epoch (metrics, gradient flow, the reference to
    its checkpoint when one is due, progress) in one transaction fenced on the lease, after
    the checkpoint's bytes; CANCEL once a cancel is asked. An epoch just written is the
    safe point to stop at: ``StopRequested`` when asked."""
    run_id, owner = claimed.run_id, claimed.owner

    def on_epoch_end(
        metrics: EpochMetrics, gradflow: GradFlowEpoch, make_checkpoint: Callable[[], bytes]
    ) -> EpochDecision:
        if beat.lost.is_set():
            raise runs.LeaseLostError(f"run {run_id} is no longer leased to {owner}")
        started = time.perf_counter()  # the write: checkpoint bytes (when due), then the rows
        # The checkpoint store may be the database itself: an outage met while writing the
        # bytes is retried like the epoch's rows (a write of the same object is idempotent).
        reference = _retrying(lambda: checkpoints.at_epoch_end(metrics.epoch, make_checkpoint),
                              f"the checkpoint of epoch {metrics.epoch} of run {run_id}")

        def write() -> bool:
            with session_scope(factory) as session:
                runs.record_epoch(
                    session, run_id, metrics, gradflow, reference, owner=owner,
                    lease_seconds=lease,
                )
                return runs.cancel_requested(session, run_id)

        cancel = _retrying(write, f"epoch {metrics.epoch} of run {run_id}")
        if reference is not None:
            checkpoints.committed(reference)
        worker_metrics.EPOCH_WRITE_SECONDS.labels(family).observe(time.perf_counter() - started)
        worker_metrics.EPOCH_SECONDS.labels(family).observe(metrics.seconds)
        if stop is not None:
            if stop.requested and not cancel:
                raise StopRequested(f"asked to stop after epoch {metrics.epoch}")
            stop.epoch_started(expected_seconds=metrics.seconds)
        return EpochDecision.CANCEL if cancel else EpochDecision.CONTINUE

    return on_epoch_end


def _train(
    factory: sessionmaker[Session], prepared: _Prepared, settings: Settings,
    stop: GracefulStop | None, beat: _Heartbeat, checkpoints: RunCheckpoints,
    fit_function: FitFunction | None,
) -> TrainingResult | str | None:
    """Train (``beat`` renewing the lease): the result; or, when training raised, how the
    failure ended the run here (failed, or queued again for an infrastructure failure); None
    when the lease moved on. The last finished epoch's checkpoint is saved at the end; a stop
    request propagates to ``execute_run``, which saves it and hands the run back."""
    if fit_function is None:
        from gradlab.core.training_loop import fit as fit_function

    claimed = prepared.claimed
    run_id, lease = claimed.run_id, settings.lease_seconds
    try:
        result = fit_function(
            prepared.spec,
            claimed.seed,
            prepared.arrays,
            device=prepared.device,
            on_epoch_end=_epoch_writer(factory, claimed, lease, beat, prepared.spec.model_family,
                                       checkpoints, stop),
            resume_from=prepared.resume_from,
        )
        checkpoints.save_pending(result.status)
        return result
    except runs.LeaseLostError as exc:
        log.warning("%s; leaving the run to its new owner", exc)
        return None
    except StopRequested:
        raise
    except Exception as exc:
        kind = classify(exc)
        log.exception("run %s failed (%s failure)", run_id, kind)
        return _failed(factory, claimed, kind, describe(exc), settings.max_attempts)


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


# --- fused packs: several claimed runs trained as one model (gradlab.core.pack) -------------


# Runs per fused pack on a GPU when GRADLAB_PACK_SIZE is unset (on the CPU: 1, every run alone).
GPU_PACK_SIZE = 4


def pack_size_on(device: str, settings: Settings) -> int:
    """``GRADLAB_PACK_SIZE`` when set; else ``GPU_PACK_SIZE`` on a GPU shared by packs, and 1
    on a GPU shared by processes (``GRADLAB_GPU_SHARING=processes``: each child trains one run)
    and on the CPU. On this project's 2-core CPU a pack of 4 VGG38 runs trained 120 images/s
    against 143 for one run alone (``gradlab bench --pack 1,4 --models vgg38 --device cpu``),
    and the smoke study took longer packed than not: packing pays where one run leaves a GPU
    idle, not on a CPU."""
    if settings.pack_size is not None:
        return settings.pack_size
    kind = device.split(":")[0]
    if kind == "auto":
        kind = resolve_device("auto").type
    return GPU_PACK_SIZE if kind == "cuda" and settings.gpu_sharing == "packs" else 1


def _claim_companions(
    factory: sessionmaker[Session], claimed: runs.ClaimedRun, settings: Settings, worker: str,
    fit_function: FitFunction | None, pack_size: int,
) -> list[runs.ClaimedRun]:
    """The queued runs that join ``claimed`` in a pack of ``pack_size``; none when that is 1
    or a stand-in training loop (which trains one run at a time) is used."""
    if pack_size <= 1 or fit_function is not None:
        return []
    try:
        with session_scope(factory) as session:
            return runs.claim_companions(
                session, claimed, worker, limit=pack_size - 1,
                lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
    except OperationalError as exc:  # packing is an optimisation: train the run alone
        log.warning("could not look for runs to pack with %s: %s", claimed.run_id, exc)
        return []


@dataclass
class _PackMember:
    """A prepared run of a pack, its checkpoint cadence and whether its lease was lost."""

    prepared: _Prepared
    checkpoints: RunCheckpoints
    beat: _Heartbeat
    lost: bool = False


def _execute_pack(
    claims: list[runs.ClaimedRun], factory: sessionmaker[Session], data: DataSource,
    device: str, *, settings: Settings, checkpoints: CheckpointStore,
    cadence: CheckpointCadence | None, stop: GracefulStop | None,
    outcomes: dict[str, str | None],
) -> str | None:
    """Train ``claims`` (each fenced on its own lease) as one fused pack; every run's outcome
    goes into ``outcomes``; returns the first run's. Shutdown and Ctrl-C hand back every run
    not finished, each at its last finished epoch, as ``execute_run`` does for one."""
    beats = {c.run_id: _Heartbeat(factory, c.run_id, c.owner, settings.lease_seconds)
             for c in claims}
    for beat in beats.values():
        beat.start()
    members: list[_PackMember] = []
    try:
        members = _prepare_pack(factory, claims, data, device, checkpoints, settings, cadence,
                                beats, stop, outcomes)
        if len(members) == 1:  # the others could not join: train it alone
            member = members[0]
            outcomes[member.prepared.claimed.run_id] = _train_and_record(
                factory, member.prepared, settings, stop, member.beat, member.checkpoints, None)
        elif members:
            _train_pack(factory, members, settings, stop, outcomes)
    except (StopRequested, KeyboardInterrupt):
        _hand_back_pack(factory, claims, members, outcomes, stop)
    except SystemExit:
        _hand_back_pack(factory, claims, members, outcomes, None, exiting=True)
        raise
    finally:
        for beat in beats.values():
            beat.stop()
    return outcomes.get(claims[0].run_id)


def _hand_back_pack(
    factory: sessionmaker[Session], claims: list[runs.ClaimedRun], members: list[_PackMember],
    outcomes: dict[str, str | None], stop: GracefulStop | None, *, exiting: bool = False,
) -> None:
    """Save each unfinished run's last finished epoch and put it back in the queue; re-raise
    a Ctrl-C (no stop request), as ``execute_run`` does."""
    for member in members:
        if member.prepared.claimed.run_id not in outcomes:
            _save_at_shutdown(member.checkpoints)
    asked = stop is not None and stop.requested
    if asked:
        stop.begin_hand_back()  # type: ignore[union-attr]
    for claim in claims:
        if claim.run_id in outcomes:
            continue
        handed = _requeue_on_shutdown(factory, claim.run_id, claim.owner)
        outcomes[claim.run_id] = HANDED_BACK if handed else None
    if not asked and not exiting:
        raise KeyboardInterrupt


def _prepare_pack(
    factory: sessionmaker[Session], claims: list[runs.ClaimedRun], data: DataSource,
    device: str, checkpoints: CheckpointStore, settings: Settings,
    cadence: CheckpointCadence | None, beats: dict[str, _Heartbeat],
    stop: GracefulStop | None, outcomes: dict[str, str | None],
) -> list[_PackMember]:
    """Prepare every claimed run; those that resume at another epoch than the first go back
    to the queue (attempt refunded) to train elsewhere. The pack is recorded on its runs."""
    members: list[_PackMember] = []
    for claim in claims:
        prepared = _prepare(factory, claim, data, device, checkpoints, settings.max_attempts)
        if not isinstance(prepared, _Prepared):
            outcomes[claim.run_id] = prepared
            continue
        if members and _resume_epoch(prepared) != _resume_epoch(members[0].prepared):
            handed = _requeue_on_shutdown(factory, claim.run_id, claim.owner)
            outcomes[claim.run_id] = HANDED_BACK if handed else None
            continue
        run_checkpoints = RunCheckpoints(
            factory, checkpoints, claim, cadence or cadence_for(prepared.device, settings),
            last_epoch=prepared.spec.hyperparameters.epochs - 1)
        members.append(_PackMember(prepared, run_checkpoints, beats[claim.run_id]))
    if stop is not None and stop.requested:
        raise StopRequested("asked to stop before training began")
    if len(members) > 1:
        _record_pack(factory, members)
    return members


def _resume_epoch(prepared: _Prepared) -> int:
    epoch = prepared.environment.get("resumed_from_epoch")
    return -1 if epoch is None else int(epoch)


def _record_pack(factory: sessionmaker[Session], members: list[_PackMember]) -> None:
    """The pack's id on each run (``runs.pack``) and in its reproducibility record."""
    pack = uuid.uuid4().hex[:12]
    owners = {m.prepared.claimed.run_id: m.prepared.claimed.owner for m in members}
    for member in members:
        member.prepared.environment["pack"] = {"id": pack, "size": len(members),
                                               "runs": list(owners)}
    with session_scope(factory) as session:
        runs.set_pack(session, owners, pack)
    log.info("training %d runs as pack %s: %s", len(members), pack, ", ".join(owners))


def _train_pack(
    factory: sessionmaker[Session], members: list[_PackMember], settings: Settings,
    stop: GracefulStop | None, outcomes: dict[str, str | None],
) -> None:
    """``fit_pack`` with each run's own epoch writer; each run's outcome recorded on its own
    lease. A run whose lease is lost leaves the pack (its new owner has it); a failure of the
    pack is a failure of each of its runs."""
    from gradlab.core.pack import PackRun, fit_pack

    first = members[0].prepared
    pack_runs = [PackRun(m.prepared.spec, m.prepared.claimed.seed,
                         on_epoch_end=_leaves_on_lost_lease(m, _epoch_writer(
                             factory, m.prepared.claimed, settings.lease_seconds, m.beat,
                             m.prepared.spec.model_family, m.checkpoints, stop)),
                         resume_from=m.prepared.resume_from)
                 for m in members]
    try:
        results = fit_pack(pack_runs, first.arrays, device=first.device)
    except StopRequested:
        raise
    except Exception as exc:
        kind = classify(exc)
        log.exception("pack of %d runs failed (%s failure)", len(members), kind)
        for m in members:
            outcomes[m.prepared.claimed.run_id] = _failed(
                factory, m.prepared.claimed, kind, describe(exc), settings.max_attempts)
        return
    for member, result in zip(members, results, strict=True):
        run_id = member.prepared.claimed.run_id
        if member.lost:
            outcomes[run_id] = None
            continue
        member.checkpoints.save_pending(result.status)
        outcomes[run_id] = _record_outcome(factory, member.prepared, result)


def _leaves_on_lost_lease(member: _PackMember, writer: EpochCallback) -> EpochCallback:
    """The run's epoch writer, except that a lost lease drops this run from the pack instead of
    stopping every run in it."""

    def on_epoch_end(metrics: EpochMetrics, gradflow: GradFlowEpoch,
                     make_checkpoint: Callable[[], bytes]) -> EpochDecision:
        try:
            return writer(metrics, gradflow, make_checkpoint)
        except runs.LeaseLostError as exc:
            log.warning("%s; it leaves the pack", exc)
            member.lost = True
            return EpochDecision.CANCEL

    return on_epoch_end
