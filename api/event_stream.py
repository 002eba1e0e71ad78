"""One client's server-sent event stream over a set of experiments (one, or a study's cells).

Events (``data`` is JSON):

- ``snapshot``: every run's state, first on a fresh stream (``runs``: status payloads);
- ``epoch``: a run finished an epoch (its metrics);
- ``status``: a run's status, attempt or progress changed;
- ``end``: every run has finished; the server closes the stream (clients should not reconnect).

Each event's ``id`` is the database time (microseconds since 1970, UTC) of the newest change the
stream has sent. A client that reconnects with ``Last-Event-ID`` (browsers do it by themselves)
gets, instead of the snapshot, every epoch recorded and every run changed since that time minus
the overlap: delivery is at least once, and events are idempotent (an epoch event replaces that
epoch; a status event states the whole run), so a client applies repeats harmlessly. Nothing
depends on which API process served the earlier connection. Idle streams get a comment line
every heartbeat so proxies and browsers keep them open (sse-starlette frames the events and
sends those pings).

Authorization is asked again every few seconds while a stream is open (``still_allowed``): a
revoked token, an admin grant taken away, or an experiment the viewer may no longer see ends
the stream, and the browser's reconnect then meets the 401 or 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import ServerSentEvent

from gradlab.api.change_feed import ChangeFeed, RunChange
from gradlab.api.errors import InvalidParameterError
from gradlab.api.prometheus_metrics import EVENT_STREAMS_CLOSED, EVENT_STREAMS_OPENED, EVENTS_SENT
from gradlab.science.records import TERMINAL_RUN_STATUSES
from gradlab.store.events import (
    RecordedEpoch,
    RunState,
    epochs_from,
    epochs_recorded_since,
    runs_of_experiments,
)

RECONNECT_MILLISECONDS = 3000
# Lines end with a bare newline, as they did before sse-starlette framed them.
SEPARATOR = "\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# An event id is at most 20 ASCII digits: microseconds since 1970 up to the year 9999.
_MAX_EVENT_ID_DIGITS = 20


def event_id(moment: datetime) -> str:
    return str((moment - _EPOCH) // timedelta(microseconds=1))


def parse_event_id(value: str) -> datetime:
    """The time a ``Last-Event-ID`` stands for; a 422 names the header when it is not one of
    ours: anything but ASCII digits (``"²"`` and other Unicode digits included), or a time
    past what a date can hold."""
    refused = InvalidParameterError(
        "Last-Event-ID", f"{value[:40]!r} is not an event id of this server"
    )
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_EVENT_ID_DIGITS:
        raise refused
    try:
        return _EPOCH + timedelta(microseconds=int(value))
    except OverflowError:
        raise refused from None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def status_payload(state: RunState) -> dict[str, Any]:
    return {
        "experiment_id": state.experiment_id,
        "run_id": state.run_id,
        "seed": state.seed,
        "status": state.status,
        "attempt": state.attempt,
        "epochs_done": state.epochs_done,
        "epochs_planned": state.epochs_planned,
        "error": state.error,
        "experiment_status": state.experiment_status,
    }


def epoch_payload(state: RunState, epoch: RecordedEpoch) -> dict[str, Any]:
    metrics = {k: _finite(v) for k, v in epoch.metrics.to_dict().items() if k != "epoch"}
    return {
        "experiment_id": state.experiment_id,
        "run_id": state.run_id,
        "seed": state.seed,
        "epoch": epoch.metrics.epoch,
        **metrics,
    }


Frame = ServerSentEvent


def _frame(event: str, data: dict[str, Any], last_id: datetime | None) -> Frame:
    EVENTS_SENT.labels(event).inc()
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    moment = event_id(last_id) if last_id is not None else None
    return ServerSentEvent(body, event=event, id=moment, sep=SEPARATOR)


@dataclass
class _Connection:
    """What this client has been told: run versions, epochs sent, the newest time."""

    states: dict[str, RunState] = field(default_factory=dict)
    sent_epochs: set[tuple[str, int, datetime]] = field(default_factory=set)
    # epochs below this (per run) the client has, from the REST views or earlier events
    epochs_known: dict[str, int] = field(default_factory=dict)
    # a fresh stream's snapshot covers each run's epochs recorded up to its state's time
    covered_until: dict[str, datetime] = field(default_factory=dict)
    last_id: datetime | None = None

    def advance(self, moment: datetime) -> None:
        if self.last_id is None or moment > self.last_id:
            self.last_id = moment

    def finished(self) -> bool:
        return bool(self.states) and all(
            s.status in TERMINAL_RUN_STATUSES for s in self.states.values()
        )

    def epoch_frame(self, state: RunState, epoch: RecordedEpoch) -> Frame | None:
        key = (epoch.run_id, epoch.metrics.epoch, epoch.recorded_at)
        covered = self.covered_until.get(epoch.run_id)
        if key in self.sent_epochs or (covered is not None and epoch.recorded_at <= covered):
            return None
        self.sent_epochs.add(key)
        self.epochs_known[state.run_id] = max(
            self.epochs_known.get(state.run_id, 0), epoch.metrics.epoch + 1
        )
        self.advance(epoch.recorded_at)
        return _frame("epoch", epoch_payload(state, epoch), self.last_id)

    def status_frame(self, state: RunState, *, force: bool = False) -> Frame | None:
        previous = self.states.get(state.run_id)
        self.states[state.run_id] = state
        if not force and previous is not None and previous.version == state.version:
            return None
        self.advance(state.updated_at)
        return _frame("status", status_payload(state), self.last_id)


@dataclass(frozen=True)
class StreamSource:
    factory: sessionmaker[Session]
    feed: ChangeFeed
    experiment_ids: list[str]
    overlap: timedelta
    kind: str
    # asked in a worker thread every ``recheck_seconds``: False ends the stream
    still_allowed: Callable[[], bool]
    recheck_seconds: float


def _start(
    source: StreamSource, resume_from: datetime | None
) -> tuple[list[RunState], list[RecordedEpoch]]:
    with source.factory() as session:
        states = runs_of_experiments(session, source.experiment_ids)
        epochs: list[RecordedEpoch] = []
        if resume_from is not None:
            since = resume_from - source.overlap
            epochs = epochs_recorded_since(session, [s.run_id for s in states], since)
    return states, epochs


def _missing_epochs(source: StreamSource, run_id: str, first: int) -> list[RecordedEpoch]:
    with source.factory() as session:
        return epochs_from(session, run_id, first)


async def _opening(
    source: StreamSource, connection: _Connection, resume_from: datetime | None
) -> AsyncIterator[Frame]:
    states, epochs = await run_in_threadpool(_start, source, resume_from)
    by_id = {s.run_id: s for s in states}
    if resume_from is None:
        for state in states:
            connection.states[state.run_id] = state
            connection.epochs_known[state.run_id] = state.epochs_done
            connection.covered_until[state.run_id] = state.updated_at
            connection.advance(state.updated_at)
        yield _frame("snapshot", {"runs": [status_payload(s) for s in states]}, connection.last_id)
        return
    since = resume_from - source.overlap
    for epoch in epochs:
        frame = connection.epoch_frame(by_id[epoch.run_id], epoch)
        if frame:
            yield frame
    for state in states:
        connection.epochs_known[state.run_id] = max(
            connection.epochs_known.get(state.run_id, 0), state.epochs_done
        )
        frame = connection.status_frame(state, force=state.updated_at >= since)
        if frame:
            yield frame


async def _changes(
    source: StreamSource, connection: _Connection, changes: list[RunChange]
) -> AsyncIterator[Frame]:
    for change in changes:
        state = change.state
        known = connection.epochs_known.get(state.run_id, 0)
        for epoch in change.epochs:
            frame = connection.epoch_frame(state, epoch)
            if frame:
                yield frame
        if state.epochs_done > connection.epochs_known.get(state.run_id, 0):
            # The feed missed a commit beyond its overlap: read what this client lacks.
            for epoch in await run_in_threadpool(_missing_epochs, source, state.run_id, known):
                frame = connection.epoch_frame(state, epoch)
                if frame:
                    yield frame
        frame = connection.status_frame(state)
        if frame:
            yield frame


async def event_stream(source: StreamSource, resume_from: datetime | None) -> AsyncIterator[Frame]:
    """The stream's events: opening (snapshot or replay), then live changes until ``end``, or
    until authorization no longer stands."""
    EVENT_STREAMS_OPENED.labels(source.kind).inc()
    # Subscribe before reading the opening state: a change committed in between is in both,
    # and the connection drops the repeat; none can fall between the two.
    subscription = source.feed.subscribe(source.experiment_ids)
    connection = _Connection()
    try:
        yield ServerSentEvent(retry=RECONNECT_MILLISECONDS, sep=SEPARATOR)
        async for frame in _opening(source, connection, resume_from):
            yield frame
        recheck_at = time.monotonic() + source.recheck_seconds
        while not connection.finished():
            changes: list[RunChange] = []
            wait = max(0.0, recheck_at - time.monotonic())
            with contextlib.suppress(TimeoutError):  # time to ask about authorization
                changes = await asyncio.wait_for(subscription.queue.get(), timeout=wait)
            if time.monotonic() >= recheck_at:
                if not await run_in_threadpool(source.still_allowed):
                    return  # revoked, or no longer theirs: the reconnect is refused
                recheck_at = time.monotonic() + source.recheck_seconds
            async for frame in _changes(source, connection, changes):
                yield frame
        ended = {s.run_id: s.status for s in connection.states.values()}
        yield _frame("end", {"runs": ended}, connection.last_id)
    finally:
        source.feed.unsubscribe(subscription)
        EVENT_STREAMS_CLOSED.labels(source.kind).inc()
