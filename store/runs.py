"""Worker side of the store: run leases, per-epoch writes, outcomes.

A run is owned through a database lease, never through the broker: ``claim_run`` is one
conditional UPDATE (queued, or running with an expired lease -> running, attempt + 1) so two
workers handed the same run id (a Redis redelivery, a reaper re-enqueue) can never both train
it. Every later write is fenced on the owner token the claim wrote, so a worker that lost its
lease (it stalled past the lease, another took over) cannot overwrite the new owner's progress.

Functions take a ``Session``, execute and flush, and never commit: the worker wraps each
step in ``session_scope``. On SQLite every write transaction here starts with a write, so it
takes the write lock first and waits on ``busy_timeout`` instead of failing on a stale read.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gradlab.science.fusion import fusion_key
from gradlab.science.records import (
    GRADFLOW_STATS,
    GRADFLOW_WINDOWS,
    TERMINAL_RUN_STATUSES,
    Divergence,
    EpochMetrics,
    GradFlowEpoch,
    TestResult,
)
from gradlab.science.spec import ExperimentSpec
from gradlab.store.base import rows_changed, utcnow
from gradlab.store.checkpoint_store import CheckpointRef
from gradlab.store.experiments import refresh_experiment_status
from gradlab.store.float_arrays import pack_floats
from gradlab.store.models import (
    Checkpoint,
    EpochMetricsRow,
    Experiment,
    GradFlowEpochRow,
    Run,
)


class LeaseLostError(RuntimeError):
    """This worker no longer owns the run (its lease expired and another worker claimed it)."""


@dataclass(frozen=True)
class ClaimedRun:
    """What a worker needs after winning a run's lease."""

    run_id: str
    experiment_id: str
    seed: int
    attempt: int
    owner: str
    spec: dict[str, Any]
    epochs_done: int


def owner_token(worker: str, attempt: int) -> str:
    """The lease owner written by a claim: the worker's name plus the attempt it started."""
    return f"{worker}#{attempt}"


def _claimable(now: datetime) -> Any:
    return or_(
        Run.status == "queued",
        and_(Run.status == "running", Run.lease_expires_at < now),
    )


def claim_run(
    session: Session,
    run_id: str,
    worker: str,
    *,
    lease_seconds: int,
    max_attempts: int,
    now: datetime | None = None,
) -> ClaimedRun | None:
    """Take the run's lease, or return None when it is not this worker's to train.

    None when the run is missing, finished, or leased by a live worker. A claimable run that
    already used ``max_attempts`` attempts is marked ``failed`` instead (a task that kills its
    worker every time must not loop forever through ``task_reject_on_worker_lost``).
    """
    now = now or utcnow()
    row = session.execute(select(Run.attempt).where(Run.id == run_id)).first()
    if row is None:
        return None
    attempt = row.attempt + 1
    owner = owner_token(worker, attempt)
    # The attempt read above is part of the condition: if another worker claimed in between,
    # attempt moved on and this UPDATE matches nothing (compare-and-swap).
    claimed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempt == row.attempt, Run.attempt < max_attempts)
        .where(_claimable(now))
        .values(
            status="running",
            attempt=attempt,
            worker=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            updated_at=now,
            pack=None,  # until claim_companions packs it: this attempt trains it alone
        )
        .execution_options(synchronize_session=False)
    )
    if rows_changed(claimed) != 1:
        _fail_if_out_of_attempts(session, run_id, max_attempts, now)
        return None
    run = session.execute(
        select(Run.experiment_id, Run.seed, Run.epochs_done, Experiment.spec)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Run.id == run_id)
    ).one()
    refresh_experiment_status(session, run.experiment_id)
    session.flush()
    return ClaimedRun(
        run_id=run_id,
        experiment_id=run.experiment_id,
        seed=run.seed,
        attempt=attempt,
        owner=owner,
        spec=dict(run.spec),
        epochs_done=run.epochs_done,
    )


def claim_companions(
    session: Session,
    primary: ClaimedRun,
    worker: str,
    *,
    limit: int,
    lease_seconds: int,
    max_attempts: int,
    scan: int = 200,
    among: Collection[str] | None = None,
    now: datetime | None = None,
) -> list[ClaimedRun]:
    """Claim up to ``limit`` queued runs that can train in one fused pack with ``primary``.

    Companions share its fusion key (``gradlab.science.fusion``) and its progress (the same
    ``epochs_done``, so the pack starts every member at the same epoch); each is claimed with
    ``claim_run``'s own conditional UPDATE, so each is fenced on its own lease exactly as if
    claimed alone, and one that another worker took first is simply skipped. The oldest
    ``scan`` queued runs are considered, oldest first (the queue's order); only those of
    ``among`` when given (``gradlab study run --cell`` trains only the cells it names).
    """
    if limit <= 0:
        return []
    key = _fusion_key_of(primary.spec)
    if key is None:
        return []
    query = (
        select(Run.id, Experiment.spec)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Run.status == "queued", Run.epochs_done == primary.epochs_done,
               Run.id != primary.run_id, Experiment.cancel_requested_at.is_(None))
    )
    if among is not None:
        query = query.where(Run.id.in_(list(among)))
    candidates = session.execute(
        query.order_by(Run.queued_at, Run.experiment_id, Run.seed).limit(scan)
    ).all()
    claimed: list[ClaimedRun] = []
    for run_id, spec in candidates:
        if len(claimed) == limit:
            break
        if _fusion_key_of(spec) != key:
            continue
        companion = claim_run(session, run_id, worker, lease_seconds=lease_seconds,
                              max_attempts=max_attempts, now=now)
        if companion is not None:
            claimed.append(companion)
    return claimed


def _fusion_key_of(spec: dict[str, Any]) -> str | None:
    """The stored spec's fusion key; None for a spec that no longer validates (it fails alone)."""
    try:
        return fusion_key(ExperimentSpec.model_validate(spec))
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None


def set_pack(session: Session, owners: dict[str, str], pack: str) -> None:
    """Record ``pack`` on the runs (run id -> lease owner) that train in it, fenced on each
    run's lease."""
    for run_id, owner in owners.items():
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.worker == owner, Run.status == "running")
            .values(pack=pack)
            .execution_options(synchronize_session=False)
        )
    session.flush()


def _fail_if_out_of_attempts(
    session: Session, run_id: str, max_attempts: int, now: datetime
) -> None:
    failed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempt >= max_attempts)
        .where(_claimable(now))
        .values(
            status="failed",
            error=f"gave up after {max_attempts} attempts: the run's worker was lost each time "
            "(killed, out of memory, or the node went away)",
            finished_at=now,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if rows_changed(failed):
        experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_id))
        if experiment_id is not None:
            refresh_experiment_status(session, experiment_id)


def heartbeat(
    session: Session,
    run_id: str,
    owner: str,
    *,
    lease_seconds: int,
    now: datetime | None = None,
) -> bool:
    """Extend the lease; False when this owner has lost the run (stop training it)."""
    now = now or utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.worker == owner, Run.status == "running")
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return rows_changed(result) == 1


def _gradflow_row(run_id: str, gradflow: GradFlowEpoch) -> dict[str, Any]:
    """The epoch's row: each statistic of each window packed, a value per layer."""
    n_layers = len(gradflow.layers)
    row: dict[str, Any] = {"run_id": run_id, "epoch": gradflow.epoch}
    for window in GRADFLOW_WINDOWS:
        stats = gradflow.window(window)
        for stat in GRADFLOW_STATS:
            values = stats.get(stat)
            if values is None or len(values) != n_layers:
                got = "missing" if values is None else f"{len(values)} values"
                raise ValueError(
                    f"gradflow {window}.{stat} of epoch {gradflow.epoch} must have one value per "
                    f"layer ({n_layers}); got {got}"
                )
            row[f"{window}_{stat}"] = pack_floats([float(v) for v in values])
    return row


def _upsert(
    session: Session,
    model: type[Any],
    rows: list[dict[str, Any]],
    keys: list[str],
    *,
    only_forward: Any | None = None,
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE for every row, in one round trip.

    A Core statement on the table (the ORM's bulk-insert machinery costs more client CPU than
    the write itself), parameterless so its SQL compiles once and is cached.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(model.__table__)
    elif dialect == "sqlite":
        stmt = sqlite.insert(model.__table__)
    else:  # pragma: no cover - only the two supported backends
        raise RuntimeError(f"unsupported database backend {dialect!r}")
    updates = {name: stmt.excluded[name] for name in rows[0] if name not in keys}
    where = None if only_forward is None else only_forward(stmt.excluded)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=updates, where=where)
    session.execute(stmt, rows)


def record_epoch(
    session: Session,
    run_id: str,
    metrics: EpochMetrics,
    gradflow: GradFlowEpoch,
    checkpoint: CheckpointRef | None,
    *,
    owner: str | None = None,
    lease_seconds: int | None = None,
) -> None:
    """Write one finished epoch: metrics row, gradient-flow row, the reference to its
    checkpoint (when one was saved: the bytes are already in the checkpoint store), and the
    run's progress, in the caller's transaction.

    Idempotent on (run_id, epoch): a re-delivered epoch replaces its rows, never duplicates
    them. With ``owner`` the write is fenced on the lease (``LeaseLostError`` if lost) and, with
    ``lease_seconds``, also renews it.
    """
    if gradflow.epoch != metrics.epoch:
        raise ValueError(
            f"metrics are for epoch {metrics.epoch} but gradflow for epoch {gradflow.epoch}"
        )
    epoch = metrics.epoch
    flow_row = _gradflow_row(run_id, gradflow)
    now = utcnow()

    # Progress first: on SQLite this takes the write lock before anything else, and with an
    # owner it is the fence (nothing else is written when the lease is gone).
    progress = update(Run).where(Run.id == run_id)
    if owner is not None:
        progress = progress.where(Run.worker == owner, Run.status == "running")
    values: dict[str, Any] = {
        "epochs_done": _greatest(Run.epochs_done, epoch + 1, session),
        "layers": list(gradflow.layers),
        "updated_at": now,
    }
    if lease_seconds is not None:
        values["heartbeat_at"] = now
        values["lease_expires_at"] = now + timedelta(seconds=lease_seconds)
    result = session.execute(progress.values(**values).execution_options(synchronize_session=False))
    if rows_changed(result) != 1:
        if owner is not None:
            raise LeaseLostError(f"run {run_id} is no longer leased to {owner}")
        raise LookupError(f"run {run_id} does not exist")

    # Upserts keyed on (run_id, epoch): a re-delivered epoch replaces its rows.
    metrics_row = {"run_id": run_id, **metrics.to_dict(), "recorded_at": now}
    _upsert(session, EpochMetricsRow, [metrics_row], ["run_id", "epoch"])
    _upsert(session, GradFlowEpochRow, [flow_row], ["run_id", "epoch"])
    if checkpoint is not None:
        if checkpoint.epoch != epoch:
            raise ValueError(f"checkpoint of epoch {checkpoint.epoch} written with epoch {epoch}")
        _upsert_checkpoint(session, run_id, checkpoint, now)
    session.flush()


def _upsert_checkpoint(session: Session, run_id: str, ref: CheckpointRef, now: datetime) -> None:
    row = {
        "run_id": run_id,
        "epoch": ref.epoch,
        "store": ref.store,
        "key": ref.key,
        "size_bytes": ref.size_bytes,
        "sha256": ref.sha256,
        "created_at": now,
    }
    # Only move forward: a re-delivered older epoch never replaces a newer checkpoint.
    _upsert(
        session,
        Checkpoint,
        [row],
        ["run_id"],
        only_forward=lambda excluded: Checkpoint.epoch <= excluded.epoch,
    )


def record_checkpoint(
    session: Session, run_id: str, ref: CheckpointRef, *, owner: str | None = None
) -> None:
    """Reference a checkpoint of an epoch recorded earlier without one (saved late: at cancel,
    at shutdown, at the end). Fenced on ``owner`` like ``record_epoch``."""
    fence = update(Run).where(Run.id == run_id, Run.epochs_done > ref.epoch)
    if owner is not None:
        fence = fence.where(Run.worker == owner, Run.status == "running")
    result = session.execute(
        fence.values(updated_at=utcnow()).execution_options(synchronize_session=False)
    )
    if rows_changed(result) != 1:
        raise LeaseLostError(
            f"run {run_id} is not leased to {owner} or has not recorded epoch {ref.epoch}"
        )
    _upsert_checkpoint(session, run_id, ref, utcnow())
    session.flush()


def _greatest(column: Any, value: int, session: Session) -> Any:
    # GREATEST on Postgres, the two-argument MAX on SQLite: epochs_done never moves backwards.
    if session.get_bind().dialect.name == "sqlite":
        return func.max(column, value)
    return func.greatest(column, value)


def finish_run(
    session: Session,
    run_id: str,
    status: str,
    *,
    owner: str | None = None,
    test: TestResult | None = None,
    divergence: Divergence | None = None,
    error: str | None = None,
    environment: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """Record the run's outcome and release its lease; roll the status up to the experiment.

    Fenced on ``owner`` when given: False (nothing written) if this worker lost the run.
    """
    if status not in TERMINAL_RUN_STATUSES:
        raise ValueError(f"status must be one of {TERMINAL_RUN_STATUSES}, got {status!r}")
    now = now or utcnow()
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "lease_expires_at": None,
        "updated_at": now,
        "error": error,
    }
    if test is not None:
        values.update(test_loss=test.loss, test_acc=test.acc, best_epoch=test.best_epoch)
    if divergence is not None:
        values.update(diverged_epoch=divergence.epoch, diverged_step=divergence.step)
    if environment is not None:
        values["environment"] = environment
    stmt = update(Run).where(Run.id == run_id)
    if owner is not None:
        stmt = stmt.where(Run.worker == owner, Run.status == "running")
    result = session.execute(stmt.values(**values).execution_options(synchronize_session=False))
    if rows_changed(result) != 1:
        return False
    experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_id))
    if experiment_id is not None:
        refresh_experiment_status(session, experiment_id)
    session.flush()
    return True


def set_environment(session: Session, run_id: str, environment: dict[str, Any]) -> None:
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(environment=environment)
        .execution_options(synchronize_session=False)
    )


def latest_checkpoint(session: Session, run_id: str) -> CheckpointRef | None:
    """The reference to the run's latest committed checkpoint (load it from the store)."""
    row = session.execute(
        select(
            Checkpoint.store, Checkpoint.key, Checkpoint.epoch, Checkpoint.size_bytes,
            Checkpoint.sha256,
        ).where(Checkpoint.run_id == run_id)
    ).first()
    return None if row is None else CheckpointRef(*row)


def last_epoch_seconds(session: Session, run_id: str) -> float | None:
    """How long the run's latest recorded epoch took to train (None before its first)."""
    seconds = session.scalar(
        select(EpochMetricsRow.seconds).where(EpochMetricsRow.run_id == run_id)
        .order_by(EpochMetricsRow.epoch.desc()).limit(1)
    )
    return None if seconds is None else float(seconds)


def forget_checkpoint(session: Session, run_id: str) -> CheckpointRef | None:
    """Delete the run's checkpoint reference (its bytes are the caller's to delete, after
    the commit); the reference it was, or None."""
    ref = latest_checkpoint(session, run_id)
    if ref is not None:
        session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id))
        session.flush()
    return ref


def cancel_requested(session: Session, run_id: str) -> bool:
    """Whether the run's experiment was asked to stop (checked once per epoch)."""
    requested = session.execute(
        select(Experiment.cancel_requested_at)
        .join(Run, Run.experiment_id == Experiment.id)
        .where(Run.id == run_id)
    ).first()
    return requested is not None and requested.cancel_requested_at is not None


def statuses(session: Session, run_ids: Collection[str]) -> dict[str, str]:
    """Each of these runs' status (missing ones left out)."""
    rows = session.execute(select(Run.id, Run.status).where(Run.id.in_(list(run_ids))))
    return {run_id: status for run_id, status in rows}


def running_runs_with_owners(session: Session) -> list[tuple[str, str | None]]:
    """(run id, lease owner) of every running run."""
    return [
        (run_id, owner)
        for run_id, owner in session.execute(
            select(Run.id, Run.worker).where(Run.status == "running")
        )
    ]


def find_lost_runs(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[str]:
    """Runs marked running whose lease expired: their worker died or was cut off."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(Run.id)
            .where(Run.status == "running", Run.lease_expires_at < now)
            .order_by(Run.lease_expires_at)
            .limit(limit)
        )
    )


def find_queued_runs(
    session: Session,
    *,
    queued_before: datetime | None = None,
    limit: int = 100,
    among: Collection[str] | None = None,
    excluding: Collection[str] = (),
) -> list[str]:
    """Queued runs, oldest first (optionally only those queued before a moment, only those
    ``among`` some runs, none of ``excluding``)."""
    query = select(Run.id).where(Run.status == "queued")
    if queued_before is not None:
        query = query.where(Run.queued_at < queued_before)
    if among is not None:
        query = query.where(Run.id.in_(list(among)))
    if excluding:
        query = query.where(Run.id.not_in(list(excluding)))
    # Seeds of one experiment share queued_at: take them in seed order.
    order = (Run.queued_at, Run.experiment_id, Run.seed)
    return list(session.scalars(query.order_by(*order).limit(limit)))


def count_queued(session: Session) -> int:
    """Runs waiting for a worker (each should have one message in the broker's queue)."""
    return int(
        session.scalar(select(func.count()).select_from(Run).where(Run.status == "queued")) or 0
    )


def requeue_running(
    session: Session,
    run_id: str,
    *,
    owner: str | None = None,
    lease_expired_before: datetime | None = None,
    refund_attempt: bool = False,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Put a running run back in the queue: the one way a run is requeued.

    Only if it is still held by ``owner`` and/or its lease expired before the given moment
    (checked in the same UPDATE: its worker may have heartbeated or finished since the caller
    looked). ``refund_attempt``: the attempt does not count (a worker told to stop hands its
    run back; it did not fail). ``error``: why (an infrastructure failure it will retry).
    Returns whether it was requeued; the experiment follows.
    """
    now = now or utcnow()
    conditions = [Run.id == run_id, Run.status == "running"]
    if owner is not None:
        conditions.append(Run.worker == owner)
    if lease_expired_before is not None:
        conditions.append(Run.lease_expires_at < lease_expired_before)
    values: dict[str, Any] = {"status": "queued", "worker": None, "lease_expires_at": None,
                              "queued_at": now, "updated_at": now}
    if refund_attempt:
        values["attempt"] = Run.attempt - 1
    if error is not None:
        values["error"] = error
    row = session.execute(
        update(Run).where(*conditions).values(**values).returning(Run.experiment_id)
    ).first()
    if row is not None:
        refresh_experiment_status(session, row.experiment_id)
    return row is not None


def mark_dispatched(session: Session, run_ids: list[str], *, now: datetime | None = None) -> None:
    """Note that these queued runs were sent to the broker again (so a reaper sends each at
    most once per period instead of flooding the queue)."""
    if not run_ids:
        return
    session.execute(
        update(Run)
        .where(Run.id.in_(run_ids), Run.status == "queued")
        .values(queued_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
