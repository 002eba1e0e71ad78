"""What the service's gauges read from the database at scrape time.

The database is shared by every API process and every worker, so gauges computed from it
answer the same on whichever process Prometheus scrapes, and need no cross-process state.
Four small grouped queries; none scans the per-epoch tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gradlab.science.records import RUN_STATUSES
from gradlab.store.base import utcnow
from gradlab.store.health import count_by_status
from gradlab.store.models import EXPERIMENT_STATUSES, Run


@dataclass(frozen=True)
class ServiceGauges:
    runs_by_status: dict[str, int]
    experiments_by_status: dict[str, int]
    # seconds since the oldest queued run was queued (0 when none waits)
    oldest_queued_seconds: float
    # per training worker (host:pid): seconds since its oldest running run's last heartbeat
    heartbeat_age_by_worker: dict[str, float]


def _age(now: datetime, moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:  # SQLite: stored UTC wall time
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())


def read_service_gauges(session: Session, now: datetime | None = None) -> ServiceGauges:
    now = now or utcnow()
    oldest = session.scalar(select(func.min(Run.queued_at)).where(Run.status == "queued"))
    heartbeats: dict[str, float] = {}
    rows = session.execute(
        select(Run.worker, func.min(Run.heartbeat_at))
        .where(Run.status == "running", Run.worker.is_not(None))
        .group_by(Run.worker)
    )
    for owner, beat in rows:
        # the lease owner is "host:pid#attempt"; the worker is the process, not the attempt
        worker = str(owner).rsplit("#", 1)[0]
        heartbeats[worker] = max(heartbeats.get(worker, 0.0), _age(now, beat))
    runs, experiments = count_by_status(session)
    return ServiceGauges(
        # every status, zero included: a series that vanishes reads as "no data", not 0
        runs_by_status={s: int(runs.get(s, 0)) for s in RUN_STATUSES},
        experiments_by_status={s: int(experiments.get(s, 0)) for s in EXPERIMENT_STATUSES},
        oldest_queued_seconds=_age(now, oldest),
        heartbeat_age_by_worker=heartbeats,
    )
