"""One shared poller per API process: what changed in the runs table, fanned out to streams.

However many browsers follow experiments, a process asks the database one question per poll
("runs changed since T", an indexed range on ``runs.updated_at``, plus the epochs those runs
recorded), and only while at least one stream is open. Several API processes each run their
own feed against the same database; nothing here is shared between processes, and a stream can
resume on any of them because event ids are database times (see ``event_stream``).

Reads overlap the previous one by ``overlap`` seconds, so a transaction that committed late
with an earlier timestamp (or a writer whose clock is a little behind) is still seen; what was
already delivered is dropped by version (runs) and by (run, epoch, time) (epochs).
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
    RecordedEpoch,
    RunState,
    epochs_recorded_since,
    runs_changed_since,
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
        self, factory: sessionmaker[Session], *, poll_seconds: float, overlap_seconds: float
    ) -> None:
        self._factory = factory
        self._poll_seconds = poll_seconds
        self._overlap = timedelta(seconds=overlap_seconds)
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._high_water: datetime | None = None
        self._delivered_runs: dict[str, tuple[str, int, int]] = {}
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
        self._high_water = None

    def _poll(self) -> list[RunChange]:
        CHANGE_FEED_POLLS.inc()
        now = utcnow()
        since = min(self._high_water or now, now) - self._overlap
        with self._factory() as session:
            states = runs_changed_since(session, since)
            # every run in the window, not only those whose version moved: a resumed attempt
            # may record an epoch again (new numbers, same epochs_done)
            epochs = epochs_recorded_since(session, [s.run_id for s in states], since)
        for state in states:
            if self._high_water is None or state.updated_at > self._high_water:
                self._high_water = state.updated_at
        if self._high_water is None:
            self._high_water = now
        new_epochs: dict[str, list[RecordedEpoch]] = {}
        for epoch in epochs:
            key = (epoch.run_id, epoch.metrics.epoch, epoch.recorded_at)
            if key not in self._delivered_epochs:
                self._delivered_epochs[key] = None
                new_epochs.setdefault(epoch.run_id, []).append(epoch)
        changes = [
            RunChange(s, new_epochs.get(s.run_id, []))
            for s in states
            if s.run_id in new_epochs or self._delivered_runs.get(s.run_id) != s.version
        ]
        # Runs outside the window can only come back with a newer change: forget them.
        self._delivered_runs = {s.run_id: s.version for s in states}
        self._forget_before(since)
        return changes

    def _forget_before(self, since: datetime) -> None:
        # Keys older than the read window can never be read again: keep memory bounded.
        for key in [k for k in self._delivered_epochs if k[2] < since]:
            del self._delivered_epochs[key]
