"""One transaction at an edge, and the runs it queued, dispatched only after it committed.

The one mechanism every edge uses (the API's request dependency, ``gradlab study run``): a
service function returns the run ids it queued, the edge hands them to
:meth:`Transaction.dispatch_after_commit`, and they reach the dispatcher only once the
transaction has committed, so a worker is never told about a run it cannot read yet. A commit
that fails dispatches nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from gradlab.dispatch.dispatchers import DispatchError, RunDispatcher
from gradlab.store.session import session_scope

log = logging.getLogger(__name__)


@dataclass
class Transaction:
    session: Session
    pending: list[str] = field(default_factory=list)

    def dispatch_after_commit(self, run_ids: Sequence[str]) -> None:
        """Send these runs to the workers once (and only if) the transaction commits."""
        self.pending.extend(run_ids)


@contextmanager
def transaction(
    factory: sessionmaker[Session],
    dispatcher: RunDispatcher,
    on_unsent: Callable[[int], None] | None = None,
) -> Iterator[Transaction]:
    """Commit when the block succeeds (roll back when it raises), then dispatch.

    The runs are committed as queued and the database, not the broker, is the record: a
    dispatch that fails is logged (``on_unsent`` counts the runs) and the reaper, or the local
    worker's poll, picks them up later. It never turns a committed request into an error.
    """
    with session_scope(factory) as session:
        tx = Transaction(session)
        yield tx
    dispatch(dispatcher, tx.pending, on_unsent)


def dispatch(
    dispatcher: RunDispatcher, run_ids: Sequence[str],
    on_unsent: Callable[[int], None] | None = None,
) -> list[str]:
    """Hand committed runs to the dispatcher; a failure is logged, never raised. Returns the
    runs the broker did not take (they stay queued)."""
    if not run_ids:
        return []
    try:
        dispatcher.dispatch(list(run_ids))
    except DispatchError as exc:
        unsent = exc.unsent
        log.warning("%s; they stay queued and the reaper will send them", exc)
    except Exception:
        unsent = list(run_ids)
        log.exception("dispatching runs %s failed; they stay queued", unsent)
    else:
        return []
    if on_unsent is not None:
        on_unsent(len(unsent))
    return unsent
