"""Submission and read side of the store: experiments and what their runs produced.

Functions here take a ``Session``, flush and never commit: the caller (the API's session
dependency) owns the transaction. Reads of per-epoch tables are one query per table for all the
runs of an experiment, so a response never costs one query per run or per epoch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.orm import Session, selectinload

from gradlab.science.records import (
    TERMINAL_RUN_STATUSES,
    EpochMetrics,
)
from gradlab.science.spec import ExperimentSpec
from gradlab.store.base import new_id, rows_changed, utcnow
from gradlab.store.models import (
    EpochMetricsRow,
    Experiment,
    Run,
    StudyCell,
)
from gradlab.store.users import EVERYONE, Viewer, visible_to

MAX_PAGE_SIZE = 200
# A cursor this store hands out is ~90 characters; anything much longer is not one.
MAX_CURSOR_LENGTH = 256
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class InvalidCursorError(ValueError):
    """A pagination cursor that this store did not hand out (or that was altered)."""


@dataclass(frozen=True)
class ExperimentPage:
    items: list[Experiment]
    next_cursor: str | None


def spec_hash(spec: ExperimentSpec) -> str:
    """sha256 of the canonical spec JSON without seeds (same configuration -> same hash)."""
    data = spec.model_dump(mode="json", exclude={"seeds"})
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_queued_run(seed: int, now: datetime) -> Run:
    """A run not yet attempted, as both experiment creation and study reuse add them."""
    return Run(
        id=new_id(),
        seed=seed,
        status="queued",
        attempt=0,
        epochs_done=0,
        queued_at=now,
        created_at=now,
        updated_at=now,
    )


def create_experiment(
    session: Session, spec: ExperimentSpec, owner_id: str | None = None
) -> Experiment:
    """Add an experiment and one queued run per seed; flushed, so ids and timestamps are set."""
    now = utcnow()
    experiment = Experiment(
        id=new_id(),
        owner_id=owner_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec_hash(spec),
        status="queued",
        created_at=now,
        updated_at=now,
        runs=[new_queued_run(seed, now) for seed in sorted(spec.seeds)],
    )
    session.add(experiment)
    session.flush()
    return experiment


def _encode_cursor(created_at: datetime, experiment_id: str) -> str:
    if created_at.tzinfo is None:  # SQLite hands back the stored UTC time without its zone
        created_at = created_at.replace(tzinfo=UTC)
    raw = json.dumps([created_at.isoformat(), experiment_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor stands for; any other shape is refused, so nothing a
    client makes up ever reaches a query (wrong types, NUL, naive times, huge strings)."""
    refused = InvalidCursorError("cursor is not one this server handed out")
    if len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise refused from exc
    if not (
        isinstance(decoded, list)
        and len(decoded) == 2
        and all(isinstance(part, str) for part in decoded)
        and _UUID.fullmatch(decoded[1])
    ):
        raise refused
    try:
        created_at = datetime.fromisoformat(decoded[0])
    except ValueError as exc:
        raise refused from exc
    if created_at.tzinfo is None:
        raise refused
    return created_at, decoded[1]


def list_experiments(
    session: Session,
    *,
    status: str | None = None,
    name: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    viewer: Viewer = EVERYONE,
) -> ExperimentPage:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat rows;
    only what ``viewer`` may see."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    query = select(Experiment).where(visible_to(Experiment.owner_id, viewer))
    if status is not None:
        query = query.where(Experiment.status == status)
    if name is not None:
        query = query.where(Experiment.name == name)
    if cursor is not None:
        created_at, experiment_id = _decode_cursor(cursor)
        query = query.where(
            tuple_(Experiment.created_at, Experiment.id) < tuple_(created_at, experiment_id)
        )
    query = query.order_by(Experiment.created_at.desc(), Experiment.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    items = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = _encode_cursor(last.created_at, last.id)
    return ExperimentPage(items, next_cursor)


@dataclass(frozen=True)
class RunProgress:
    runs: int
    runs_finished: int
    epochs_done: int
    # the latest recorded epoch of an unfinished run (None when none has one)
    current_train_loss: float | None = None
    # mean seconds per recorded epoch over the experiment's runs (None before the first)
    mean_epoch_seconds: float | None = None
    runs_running: int = 0


def run_progress(session: Session, experiment_ids: Sequence[str]) -> dict[str, RunProgress]:
    """Per experiment: its runs, how many finished and are running, their epochs done, the
    current training loss and the mean epoch time (three grouped queries, whatever the page)."""
    if not experiment_ids:
        return {}
    ids = list(experiment_ids)
    finished = func.sum(case((Run.status.in_(TERMINAL_RUN_STATUSES), 1), else_=0))
    running = func.sum(case((Run.status == "running", 1), else_=0))
    query = (
        select(Run.experiment_id, func.count(), finished, func.sum(Run.epochs_done), running)
        .where(Run.experiment_id.in_(ids))
        .group_by(Run.experiment_id)
    )
    seconds = _mean_epoch_seconds(session, ids)
    losses = _current_train_losses(session, ids)
    return {
        row[0]: RunProgress(
            int(row[1]), int(row[2] or 0), int(row[3] or 0),
            current_train_loss=losses.get(row[0]), mean_epoch_seconds=seconds.get(row[0]),
            runs_running=int(row[4] or 0),
        )
        for row in session.execute(query)
    }


def _mean_epoch_seconds(session: Session, experiment_ids: list[str]) -> dict[str, float]:
    query = (
        select(Run.experiment_id, func.avg(EpochMetricsRow.seconds))
        .join(EpochMetricsRow, EpochMetricsRow.run_id == Run.id)
        .where(Run.experiment_id.in_(experiment_ids))
        .group_by(Run.experiment_id)
    )
    return {row[0]: float(row[1]) for row in session.execute(query) if row[1] is not None}


def _current_train_losses(session: Session, experiment_ids: list[str]) -> dict[str, float]:
    """The training loss of each experiment's most recently recorded epoch among its
    unfinished runs: what a live list shows moving."""
    newest_first = func.row_number().over(
        partition_by=Run.experiment_id,
        order_by=(EpochMetricsRow.recorded_at.desc(), EpochMetricsRow.epoch.desc()),
    )
    ranked = (
        select(Run.experiment_id, EpochMetricsRow.train_loss, newest_first.label("rank"))
        .join(EpochMetricsRow, EpochMetricsRow.run_id == Run.id)
        .where(Run.experiment_id.in_(experiment_ids),
               Run.status.not_in(TERMINAL_RUN_STATUSES))
        .subquery()
    )
    query = select(ranked.c.experiment_id, ranked.c.train_loss).where(ranked.c.rank == 1)
    return {row[0]: float(row[1]) for row in session.execute(query)}


def get_experiment(
    session: Session, experiment_id: str, viewer: Viewer = EVERYONE
) -> Experiment | None:
    """The experiment with its runs (ordered by seed), or None (also when ``viewer`` may not
    see it: another user's experiment is not found, never forbidden)."""
    query = (
        select(Experiment)
        .options(selectinload(Experiment.runs))
        .where(Experiment.id == experiment_id, visible_to(Experiment.owner_id, viewer))
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one_or_none()


def derive_experiment_status(run_statuses: Iterable[str]) -> str:
    """An experiment's status from its runs' statuses.

    Not all finished: queued while every run is queued, else running. All finished: succeeded
    when every run did; otherwise the most telling outcome, failed > cancelled > diverged.
    """
    statuses = set(run_statuses)
    if not statuses or statuses == {"queued"}:
        return "queued"
    if not statuses <= set(TERMINAL_RUN_STATUSES):
        return "running"
    for outcome in ("failed", "cancelled", "diverged"):
        if outcome in statuses:
            return outcome
    return "succeeded"


def refresh_experiment_status(session: Session, experiment_id: str) -> str:
    """Recompute and store an experiment's status from its runs (call after a run changes)."""
    statuses = session.scalars(select(Run.status).where(Run.experiment_id == experiment_id))
    status = derive_experiment_status(statuses)
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status != status)
        .values(status=status, updated_at=utcnow())
    )
    return status


def request_cancel(
    session: Session, experiment_id: str, viewer: Viewer = EVERYONE
) -> Experiment | None:
    """Ask an experiment to stop: queued runs are cancelled now, running ones at their next epoch.

    Idempotent; an experiment whose runs have all finished is returned unchanged. None if absent
    or not ``viewer``'s.
    """
    experiment = session.scalars(
        select(Experiment).where(
            Experiment.id == experiment_id, visible_to(Experiment.owner_id, viewer)
        )
    ).one_or_none()
    if experiment is None:
        return None
    now = utcnow()
    # Conditional on status, so a run a worker claims at the same moment is left to the worker,
    # which sees cancel_requested_at at its next epoch.
    cancelled = session.execute(
        update(Run)
        .where(Run.experiment_id == experiment_id, Run.status == "queued")
        .values(status="cancelled", finished_at=now, updated_at=now)
    )
    unfinished = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.experiment_id == experiment_id, Run.status.not_in(TERMINAL_RUN_STATUSES))
    )
    if experiment.cancel_requested_at is None and (rows_changed(cancelled) or unfinished):
        experiment.cancel_requested_at = now
    session.flush()
    refresh_experiment_status(session, experiment_id)
    return get_experiment(session, experiment_id, viewer)


class ExperimentInUseError(RuntimeError):
    """The experiment cannot be deleted now: a run may still write, or a study holds it."""


def delete_experiment(session: Session, experiment_id: str) -> list[str] | None:
    """Delete a finished experiment with its runs, epochs, gradient flow and checkpoint
    references; return its run ids (the caller deletes their checkpoint bytes after the
    commit), or None if there is no such experiment.

    Finished statuses never change, so once every run has finished no worker can write to it
    any more; ``ExperimentInUseError`` while one is queued or running (cancel it first) or
    while it is a cell of a study.
    """
    if session.get(Experiment, experiment_id) is None:
        return None
    unfinished = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.experiment_id == experiment_id, Run.status.not_in(TERMINAL_RUN_STATUSES))
    )
    if unfinished:
        raise ExperimentInUseError(
            f"experiment {experiment_id} has {unfinished} queued or running run(s): cancel it "
            "and wait until they have stopped"
        )
    study_id = session.scalar(
        select(StudyCell.study_id).where(StudyCell.experiment_id == experiment_id).limit(1)
    )
    if study_id is not None:
        raise ExperimentInUseError(f"experiment {experiment_id} is a cell of study {study_id}")
    run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == experiment_id)))
    # The foreign keys cascade to runs, epoch metrics, gradient flow and checkpoint references.
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    session.expunge_all()
    return run_ids


def metrics_of(row: Sequence[float | int]) -> EpochMetrics:
    """An epoch's metrics from the values of ``METRIC_COLUMNS``, in their order."""
    return EpochMetrics(
        epoch=int(row[0]),
        train_loss=float(row[1]),
        train_acc=float(row[2]),
        val_loss=float(row[3]),
        val_acc=float(row[4]),
        lr=float(row[5]),
        seconds=float(row[6]),
    )


# The columns of epoch_metrics that make an ``EpochMetrics`` (``metrics_of``), in its order.
METRIC_COLUMNS = (
    EpochMetricsRow.epoch,
    EpochMetricsRow.train_loss,
    EpochMetricsRow.train_acc,
    EpochMetricsRow.val_loss,
    EpochMetricsRow.val_acc,
    EpochMetricsRow.lr,
    EpochMetricsRow.seconds,
)


def read_metrics(session: Session, run_ids: Sequence[str]) -> dict[str, list[EpochMetrics]]:
    """Every epoch's metrics of these runs, in epoch order (one query)."""
    result: dict[str, list[EpochMetrics]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return result
    query = (
        select(EpochMetricsRow.run_id, *METRIC_COLUMNS)
        .where(EpochMetricsRow.run_id.in_(run_ids))
        .order_by(EpochMetricsRow.run_id, EpochMetricsRow.epoch)
    )
    for run_id, *row in session.execute(query):
        result[run_id].append(metrics_of(row))
    return result


def read_final_metrics(session: Session, run_ids: Sequence[str]) -> dict[str, EpochMetrics]:
    """The last recorded epoch's metrics of each run that has one (one query)."""
    if not run_ids:
        return {}
    last = (
        select(EpochMetricsRow.run_id, func.max(EpochMetricsRow.epoch).label("epoch"))
        .where(EpochMetricsRow.run_id.in_(run_ids))
        .group_by(EpochMetricsRow.run_id)
        .subquery()
    )
    query = select(EpochMetricsRow.run_id, *METRIC_COLUMNS).join(
        last,
        (EpochMetricsRow.run_id == last.c.run_id) & (EpochMetricsRow.epoch == last.c.epoch),
    )
    return {run_id: metrics_of(row) for run_id, *row in session.execute(query)}


def metric_epoch_counts(session: Session, run_ids: Sequence[str]) -> tuple[int, int]:
    """The most epochs one of these runs recorded metrics for, and how many distinct epochs
    they recorded together: a sampling cap at or above both samples nothing."""
    if not run_ids:
        return 0, 0
    per_run = (
        select(func.count().label("n"))
        .where(EpochMetricsRow.run_id.in_(list(run_ids)))
        .group_by(EpochMetricsRow.run_id)
        .subquery()
    )
    longest = session.scalar(select(func.max(per_run.c.n))) or 0
    distinct = session.scalar(
        select(func.count(func.distinct(EpochMetricsRow.epoch)))
        .where(EpochMetricsRow.run_id.in_(list(run_ids)))
    ) or 0
    return int(longest), int(distinct)
