"""The change feed's reads: which runs changed since a moment, and the epochs they recorded.

Server-sent events are built from these, never from an in-process log: every API process asks
the database the same cheap questions (an indexed range on ``runs.updated_at``, and epoch rows
by run and ``recorded_at``), so a client can resume its stream on any process. Times are the
writers' clocks as stored; callers read with an overlap and drop what they already sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from gradlab.science.records import EpochMetrics
from gradlab.store.experiments import METRIC_COLUMNS, metrics_of
from gradlab.store.models import EpochMetricsRow, Experiment, Run, Study, StudyCell
from gradlab.store.users import EVERYONE, Viewer, visible_to


@dataclass(frozen=True)
class RunState:
    """A run as an event stream shows it."""

    run_id: str
    experiment_id: str
    seed: int
    status: str
    attempt: int
    epochs_done: int
    error: str | None
    updated_at: datetime
    experiment_status: str
    epochs_planned: int | None

    @property
    def version(self) -> tuple[str, int, int]:
        """What a status event reports: a change in any of these is an event."""
        return (self.status, self.attempt, self.epochs_done)


@dataclass(frozen=True)
class RecordedEpoch:
    run_id: str
    metrics: EpochMetrics
    recorded_at: datetime


_RUN_COLUMNS = (
    Run.id,
    Run.experiment_id,
    Run.seed,
    Run.status,
    Run.attempt,
    Run.epochs_done,
    Run.error,
    Run.updated_at,
    Experiment.status,
    Experiment.spec,
)


def _states(session: Session, query: object) -> list[RunState]:
    states = []
    for row in session.execute(query):  # type: ignore[call-overload]
        spec = row[9] or {}
        planned = (spec.get("hyperparameters") or {}).get("epochs")
        states.append(
            RunState(
                run_id=row[0],
                experiment_id=row[1],
                seed=row[2],
                status=row[3],
                attempt=row[4],
                epochs_done=row[5],
                error=row[6],
                updated_at=_utc(row[7]),
                experiment_status=row[8],
                epochs_planned=planned if isinstance(planned, int) else None,
            )
        )
    return states


# A place in the order the change feed reads runs: (updated_at, run id).
ChangeCursor = tuple[datetime, str]
_KEY_TYPES = (Run.updated_at.type, Run.id.type)


def runs_changed_after(
    session: Session, after: ChangeCursor, limit: int, until: ChangeCursor | None = None
) -> list[RunState]:
    """At most ``limit`` runs whose (updated_at, id) comes after ``after`` (and not after
    ``until``), oldest change first: a reader that resumes from the last one it got always
    moves on, however many runs changed at the same moment."""
    key = tuple_(Run.updated_at, Run.id)
    query = (
        select(*_RUN_COLUMNS)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(key > tuple_(*after, types=_KEY_TYPES))
        .order_by(Run.updated_at, Run.id)
        .limit(limit)
    )
    if until is not None:
        query = query.where(key <= tuple_(*until, types=_KEY_TYPES))
    return _states(session, query)


def runs_of_experiments(session: Session, experiment_ids: Sequence[str]) -> list[RunState]:
    """Every run of these experiments, by experiment and seed."""
    if not experiment_ids:
        return []
    query = (
        select(*_RUN_COLUMNS)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Run.experiment_id.in_(list(experiment_ids)))
        .order_by(Run.experiment_id, Run.seed)
    )
    return _states(session, query)


def study_experiment_ids(
    session: Session, study_id: str, viewer: Viewer = EVERYONE
) -> list[str] | None:
    """The experiments of a study's cells (None when the study does not exist, or is not
    ``viewer``'s to see)."""
    owner = session.scalar(select(Study.id).where(Study.id == study_id,
                                                  visible_to(Study.owner_id, viewer)))
    if owner is None:
        return None
    query = select(StudyCell.experiment_id).where(StudyCell.study_id == study_id)
    return list(dict.fromkeys(session.scalars(query.order_by(StudyCell.position))))


def epochs_recorded_since(
    session: Session, run_ids: Sequence[str], since: datetime
) -> list[RecordedEpoch]:
    """Epoch rows of these runs recorded at or after ``since``, in recording order."""
    if not run_ids:
        return []
    query = (
        select(*_RECORDED_COLUMNS)
        .where(EpochMetricsRow.run_id.in_(list(run_ids)), EpochMetricsRow.recorded_at >= since)
        .order_by(EpochMetricsRow.recorded_at, EpochMetricsRow.run_id, EpochMetricsRow.epoch)
    )
    return [_recorded(*row) for row in session.execute(query)]


def epochs_from(session: Session, run_id: str, first_epoch: int) -> list[RecordedEpoch]:
    """A run's epochs from ``first_epoch`` on (a stream that fell behind catches up)."""
    query = (
        select(*_RECORDED_COLUMNS)
        .where(EpochMetricsRow.run_id == run_id, EpochMetricsRow.epoch >= first_epoch)
        .order_by(EpochMetricsRow.epoch)
    )
    return [_recorded(*row) for row in session.execute(query)]


_RECORDED_COLUMNS = (EpochMetricsRow.run_id, EpochMetricsRow.recorded_at, *METRIC_COLUMNS)


def _recorded(run_id: str, recorded_at: datetime | None, *metrics: float) -> RecordedEpoch:
    # Rows written before the change feed existed have no time: they are older than any stream.
    recorded = _utc(recorded_at) if recorded_at else datetime.min.replace(tzinfo=UTC)
    return RecordedEpoch(run_id=run_id, metrics=metrics_of(metrics), recorded_at=recorded)


def _utc(moment: datetime) -> datetime:
    # SQLite hands back the stored UTC wall time without its zone; PostgreSQL an aware time.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def all_visible(session: Session, experiment_ids: Sequence[str], viewer: Viewer) -> bool:
    """Whether ``viewer`` may still see every one of these experiments (none deleted, none
    another user's): an open event stream asks this again every few seconds."""
    ids = set(experiment_ids)
    if not ids:
        return True
    visible = session.scalar(
        select(func.count()).select_from(Experiment)
        .where(Experiment.id.in_(list(ids)), visible_to(Experiment.owner_id, viewer))
    )
    return int(visible or 0) == len(ids)
