"""Find runs whose worker was lost (expired lease) and send them to be trained again.

A lost run goes back to ``queued`` (keeping its attempt count, which the next claim checks
against the cap) and is dispatched; whoever claims it resumes from its last checkpoint.
Queued runs that have waited longer than a lease while the broker's queue is empty are
resent too: the broker lost their message (a Redis restart without persistence). A duplicate
message is harmless, the lease refuses it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from gradlab.dispatch.dispatchers import RunDispatcher
from gradlab.settings import Settings
from gradlab.store import runs
from gradlab.store.base import utcnow
from gradlab.store.session import session_scope

log = logging.getLogger(__name__)


def requeue_lost_runs(session: Session, *, now: datetime | None = None) -> list[str]:
    """Put running runs with an expired lease back to queued; return their ids."""
    now = now or utcnow()
    lost = runs.find_lost_runs(session, now=now)
    requeued: list[str] = []
    for run_id in lost:
        if runs.requeue_running(session, run_id, lease_expired_before=now, now=now):
            requeued.append(run_id)
    session.flush()
    return requeued


def _queue_may_have_lost_messages(dispatcher: RunDispatcher) -> bool:
    # A run waits in the queue behind others for as long as it takes; only when the broker's
    # queue is empty while runs are still queued were their messages lost. A dispatcher that
    # cannot tell (None, or no backlog method) gets the resend: duplicates are refused anyway.
    backlog = getattr(dispatcher, "backlog", None)
    count = backlog() if callable(backlog) else None
    return count is None or count == 0


def reap(
    factory: sessionmaker[Session],
    dispatcher: RunDispatcher,
    settings: Settings,
    *,
    now: datetime | None = None,
    resend_queued: bool = True,
) -> list[str]:
    """One pass: requeue lost runs, resend long-queued ones; dispatch after commit."""
    now = now or utcnow()
    with session_scope(factory) as session:
        lost = requeue_lost_runs(session, now=now)
        stale: list[str] = []
        if resend_queued and _queue_may_have_lost_messages(dispatcher):
            cutoff = now - timedelta(seconds=settings.lease_seconds)
            stale = [
                r for r in runs.find_queued_runs(session, queued_before=cutoff) if r not in lost
            ]
            runs.mark_dispatched(session, stale, now=now)
    if lost:
        log.warning("requeued %d lost run(s): %s", len(lost), ", ".join(lost))
    if lost or stale:
        dispatcher.dispatch([*lost, *stale])
    return [*lost, *stale]
