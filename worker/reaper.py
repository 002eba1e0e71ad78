"""Find runs whose worker was lost (expired lease) and send them to be trained again.

A lost run goes back to ``queued`` (keeping its attempt count, which the next claim checks
against the cap) and is dispatched; whoever claims it resumes from its last checkpoint.

Queued runs whose message may be gone are resent too: the broker lost it (a Redis flush or a
restart without persistence), or it was never sent (the broker was down at submission). Where
the broker's messages can be read (Redis), exactly the runs sent at least a lease ago that have
no message there are sent again. Elsewhere, when the queue holds fewer messages than the
database has queued runs, that many of the runs sent longest ago are; either way a queue that
is never empty (a busy cluster) cannot starve the resend. A duplicate message is harmless: the
lease refuses it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from gradlab.dispatch.dispatchers import MAX_PEEK_MESSAGES, RunDispatcher
from gradlab.services.transaction import dispatch
from gradlab.settings import WorkerSettings
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


def missing_messages(session: Session, dispatcher: RunDispatcher, sending: int) -> int | None:
    """How many queued runs have no message in the broker's queue, at least: queued runs
    minus the messages waiting and the ``sending`` about to be sent. None when the dispatcher
    cannot count its queue (then every run queued for longer than a lease is resent;
    duplicates are refused anyway)."""
    backlog = getattr(dispatcher, "backlog", None)
    waiting: int | None = backlog() if callable(backlog) else None
    if waiting is None:
        return None
    return max(0, runs.count_queued(session) - waiting - sending)


def runs_to_resend(
    session: Session, dispatcher: RunDispatcher, *, sent_before: datetime, exclude: list[str]
) -> list[str]:
    """Queued runs last sent before ``sent_before`` whose message may be lost, oldest first."""
    read = getattr(dispatcher, "waiting_run_ids", None)
    waiting = read() if callable(read) else None
    if waiting is not None:  # the broker's messages, read: exactly the runs without one
        stale = runs.find_queued_runs(session, queued_before=sent_before,
                                      limit=MAX_PEEK_MESSAGES)
        return [r for r in stale if r not in waiting and r not in exclude]
    missing = missing_messages(session, dispatcher, sending=len(exclude))
    if missing == 0:
        return []
    stale = [r for r in runs.find_queued_runs(session, queued_before=sent_before)
             if r not in exclude]
    return stale if missing is None else stale[:missing]


def reap(
    factory: sessionmaker[Session],
    dispatcher: RunDispatcher,
    settings: WorkerSettings,
    *,
    now: datetime | None = None,
    resend_queued: bool = True,
) -> list[str]:
    """One pass: requeue lost runs, resend long-queued ones; dispatch after commit.

    A resent run is marked as sent (its ``queued_at`` moves on) only once the broker took its
    message: marked before, it would look resent to a reader while its message is not there yet,
    or at all when the publish fails (the broker down), and wait a lease for the next resend.
    Unmarked, the next pass sends it again."""
    now = now or utcnow()
    with session_scope(factory) as session:
        lost = requeue_lost_runs(session, now=now)
        stale: list[str] = []
        if resend_queued:
            cutoff = now - timedelta(seconds=settings.lease_seconds)
            stale = runs_to_resend(session, dispatcher, sent_before=cutoff, exclude=lost)
    if lost:
        log.warning("requeued %d lost run(s): %s", len(lost), ", ".join(lost))
    if stale:
        log.warning("resending %d queued run(s) whose message may be lost", len(stale))
    unsent = set(dispatch(dispatcher, [*lost, *stale]))
    resent = [r for r in stale if r not in unsent]
    if resent:
        with session_scope(factory) as session:
            runs.mark_dispatched(session, resent, now=now)
    return [*lost, *stale]

