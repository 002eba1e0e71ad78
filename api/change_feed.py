"""One shared poller per API process: what changed in the runs table, fanned out to streams.

However many browsers follow experiments, a process asks the database the same few questions
per poll (runs changed after a mark, an indexed range on ``runs.updated_at``, plus the epochs
those runs recorded), and only while at least one stream is open. Several API processes each
run their own feed against the same database; nothing here is shared between processes, and a
stream can resume on any of them because event ids are database times (see ``event_stream``).

Each poll reads at most ``batch`` runs forward from its mark, (updated_at, id) of the last run
it read, and moves the mark to the last one it got: whatever one poll returns, the next one
starts after it, so any number of runs changing at once (one user creating and cancelling
large studies) delays the feed by a poll per ``batch`` runs, never stops it. A second read
per poll sweeps the ``overlap`` seconds behind the mark, ``batch`` runs at a time, for a
transaction that committed late with an earlier timestamp (or a writer whose clock is a
little behind); what was already delivered is dropped by version (runs) and by
(run, epoch, time) (epochs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.prometheus_metrics import CHANGE_FEED_POLLS
from gradlab.store.base import utcnow
from gradlab.store.events import (
    ChangeCursor,
    RecordedEpoch,
    RunState,
    epochs_recorded_since,
    runs_changed_after,
)

log = logging.getLogger(__name__)

EpochKey = tuple[str, int, datetime]


@dataclass(frozen=True)
class RunChange:
    """A run's new state and the epochs it recorded since the feed last looked."""

    state: RunState
    epochs: list[RecordedEpoch]


@dataclass(eq=False)
class Subscription:
    experiment_ids: frozenset[str]
    queue: asyncio.Queue[list[RunChange]] = field(default_factory=asyncio.Queue)


class ChangeFeed:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        poll_seconds: float,
        overlap_seconds: float,
        batch: int = 10_000,
    ) -> None:
        self._factory = factory
        self._poll_seconds = poll_seconds
        self._overlap = timedelta(seconds=overlap_seconds)
        self._batch = batch
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._mark: ChangeCursor | None = None  # the newest run read forward
        self._sweep: ChangeCursor | None = None  # where the overlap sweep goes on
        self._delivered_runs: dict[str, RunState] = {}
        self._delivered_epochs: dict[EpochKey, None] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, experiment_ids: Iterable[str]) -> Subscription:
        subscription = Subscription(frozenset(experiment_ids))
        self._subscriptions.add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="change-feed")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    async def close(self) -> None:
        self._subscriptions.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while self._subscriptions:
            try:
                changes = await run_in_threadpool(self._poll)
            except Exception as exc:  # the database is briefly away: streams wait, then go on
                log.warning("change feed poll failed: %s", exc)
                changes = []
            for subscription in list(self._subscriptions):
                mine = [c for c in changes if c.state.experiment_id in subscription.experiment_ids]
                if mine:
                    subscription.queue.put_nowait(mine)
            await asyncio.sleep(self._poll_seconds)
        # nobody listens: the next subscriber starts a fresh loop (and a fresh window)
        self._mark = self._sweep = None

    def _poll(self) -> list[RunChange]:
        CHANGE_FEED_POLLS.inc()
        if self._mark is None:
            self._mark = (utcnow() - self._overlap, "")
        with self._factory() as session:
            states = self._read(session)
            since = self._mark[0] - self._overlap
            # every run read, not only those whose version moved: a resumed attempt may
            # record an epoch again (new numbers, same epochs_done)
            epochs = epochs_recorded_since(session, list({s.run_id for s in states}), since)
        new_epochs: dict[str, list[RecordedEpoch]] = {}
        for epoch in epochs:
            key = (epoch.run_id, epoch.metrics.epoch, epoch.recorded_at)
            if key not in self._delivered_epochs:
                self._delivered_epochs[key] = None
                new_epochs.setdefault(epoch.run_id, []).append(epoch)
        changes = []
        for state in _newest_per_run(states):
            delivered = self._delivered_runs.get(state.run_id)
            if state.run_id in new_epochs or delivered is None or (
                    delivered.version != state.version):
                changes.append(RunChange(state, new_epochs.get(state.run_id, [])))
            self._delivered_runs[state.run_id] = state
        self._forget_before(since)
        return changes

    def _read(self, session: Session) -> list[RunState]:
        """Forward from the mark (it always moves to the last run read), then the next stretch
        of the overlap window behind it (the sweep starts over once it reaches the mark)."""
        assert self._mark is not None
        forward = runs_changed_after(session, self._mark, self._batch)
        until = self._mark
        if forward:
            self._mark = (forward[-1].updated_at, forward[-1].run_id)
        window_start: ChangeCursor = (until[0] - self._overlap, "")
        sweep_from = max(self._sweep or window_start, window_start)
        late = runs_changed_after(session, sweep_from, self._batch, until=until)
        full = len(late) == self._batch
        self._sweep = (late[-1].updated_at, late[-1].run_id) if full else None
        return [*late, *forward]

    def _forget_before(self, since: datetime) -> None:
        # What is older than the read window can never be read again: keep memory bounded
        # (a run outside it can only come back with a newer change).
        for key in [k for k in self._delivered_epochs if k[2] < since]:
            del self._delivered_epochs[key]
        for run_id in [r for r, s in self._delivered_runs.items() if s.updated_at < since]:
            del self._delivered_runs[run_id]


def _newest_per_run(states: list[RunState]) -> list[RunState]:
    """One state per run, its newest, in the order of their changes."""
    newest: dict[str, RunState] = {}
    for state in states:
        known = newest.get(state.run_id)
        if known is None or state.updated_at >= known.updated_at:
            newest[state.run_id] = state
    return sorted(newest.values(), key=lambda s: (s.updated_at, s.run_id))
