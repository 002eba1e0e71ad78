"""Stopping training without losing a run: SIGTERM (a Kubernetes eviction, a rolling update,
``gradlab serve`` stopping), a time limit (``gradlab study run --time-limit``), Ctrl-C.

A stop only sets flags; nothing is ever raised into a thread, so every line of the main
thread (database writes included) runs to its end. At each epoch boundary the epoch writer
asks ``at_boundary``: stop when a stop was asked, or when the next epoch (predicted from the
last one's duration) would end after the deadline; the run is then handed back with that
epoch's checkpoint. When waiting for the boundary would pass the deadline, a watcher thread
sets ``abandon``, which the training loop reads every step: training ends within one step, the
epoch in progress is discarded, and the run is handed back at its last checkpoint.

Deadlines: SIGTERM, its arrival plus ``GRADLAB_SHUTDOWN_GRACE_SECONDS`` less
``HAND_BACK_MARGIN_SECONDS`` (kept for the hand-back and the exit); a time limit, its end;
the first Ctrl-C, none (stop at the next boundary, however far); the second Ctrl-C, now.

Signal handlers only assign attributes (they run in the main thread between two bytecodes);
the watcher thread does the rest, announcements included, so a handler never writes to a
stream the main thread may be writing to.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

# Kept free at the end of a SIGTERM's grace period to write the hand-back (one small UPDATE)
# and exit before the pod is killed.
HAND_BACK_MARGIN_SECONDS = 2.0
WATCH_INTERVAL_SECONDS = 0.2

Clock = Callable[[], float]
Announce = Callable[[str], None]


class TimeLimit:
    """A time budget for training: its end, and the epoch durations measured against it, per
    experiment (seeds of one experiment train at one speed), to predict whether the next (or
    a first) epoch fits before the end."""

    def __init__(self, seconds: float, *, clock: Clock = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.ends_at = clock() + seconds
        self._epoch_seconds: dict[str, float] = {}
        # Runs not started because their first epoch was predicted not to fit: run id ->
        # the predicted seconds (the caller says so, and does not offer them again).
        self.refused: dict[str, float] = {}

    def left(self) -> float:
        return max(0.0, self.ends_at - self.clock())

    def fits(self, seconds: float) -> bool:
        return self.clock() + seconds <= self.ends_at

    def measured(self, experiment_id: str, seconds: float) -> None:
        self._epoch_seconds[experiment_id] = seconds

    def expected(self, experiment_id: str) -> float | None:
        return self._epoch_seconds.get(experiment_id)


class StopControl:
    """One process's stop: whether one was asked, its deadline, and the ``abandon`` event the
    training loop reads every step. Its clock is the time limit's, when it has one: one clock
    for every deadline and duration."""

    def __init__(self, grace_seconds: float, *, time_limit: TimeLimit | None = None,
                 announce: Announce | None = None) -> None:
        self.grace_seconds = grace_seconds
        self.time_limit = time_limit
        self.abandon = threading.Event()
        self.reason: str | None = None
        self.requested_at: float | None = None
        # Runs stopped mid-epoch (that epoch discarded), for the caller to say so.
        self.cut_short: list[str] = []
        self._request_deadline: float | None = None
        self._epoch_ends_at: float | None = None
        self._announce, self._announced = announce, 0
        self._interrupts = 0
        self._clock = time.monotonic if time_limit is None else time_limit.clock
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def now(self) -> float:
        return self._clock()

    @property
    def deadline(self) -> float | None:
        """When training must have stopped: the earlier of the request's and the time
        limit's ends; None when neither bounds it."""
        ends = [d for d in (self._request_deadline,
                            None if self.time_limit is None else self.time_limit.ends_at)
                if d is not None]
        return min(ends, default=None)

    def request(self, reason: str, *, within: float | None) -> None:
        """Ask to stop at the next epoch boundary; with ``within``, training must have
        stopped that many seconds from now (the watcher abandons the epoch otherwise)."""
        now = self._clock()
        if self.requested_at is None:
            self.requested_at, self.reason = now, reason
        if within is not None:
            deadline = now + max(0.0, within)
            if self._request_deadline is None or deadline < self._request_deadline:
                self._request_deadline = deadline

    def on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        self.request("SIGTERM", within=self.grace_seconds - HAND_BACK_MARGIN_SECONDS)

    def on_sigint(self, _signum: int, _frame: FrameType | None) -> None:
        """Ctrl-C: the first stops at the next epoch boundary; the second stops now (the
        epoch in progress is discarded); a third is Python's own KeyboardInterrupt, for a
        process stuck outside training."""
        self._interrupts += 1
        if self._interrupts == 1:
            self.request("Ctrl-C", within=None)
        else:
            # "Now" means before the next step: set here, not at the watcher's next poll, which
            # a fast step would outrun. (The loop only reads the event: no lock to deadlock on.)
            self.request("Ctrl-C", within=0.0)
            self.abandon.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def at_boundary(self, next_epoch_seconds: float) -> bool:
        """At an epoch boundary: True to stop here, because a stop was asked or the next epoch
        (about ``next_epoch_seconds``) would end after the time limit."""
        if self.requested:
            return True
        if self.time_limit is not None and not self.time_limit.fits(next_epoch_seconds):
            # This run stops; the process goes on with runs whose epochs may still fit.
            return True
        self._epoch_ends_at = self._clock() + next_epoch_seconds
        return False

    def watch(self) -> None:
        """Start the watcher (once): it sets ``abandon`` when waiting for the next boundary
        would pass the deadline, and announces requests."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="stop-watcher",
                                             daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def must_abandon(self, now: float) -> bool:
        """Whether training must stop mid-epoch now: the deadline has come, or a stop was asked
        and the epoch in progress would end after the deadline (waiting gains nothing)."""
        deadline = self.deadline
        if deadline is None:
            return False
        if now >= deadline:
            return True
        return (self.requested and self._epoch_ends_at is not None
                and self._epoch_ends_at > deadline)

    def _watch(self) -> None:
        while not self._closed.wait(WATCH_INTERVAL_SECONDS):
            self._announce_requests()
            if not self.abandon.is_set() and self.must_abandon(self._clock()):
                if not self.requested:
                    self.request("time limit", within=0.0)
                self.abandon.set()
                self._announce_requests()

    def _announce_requests(self) -> None:
        if self._announce is None:
            return
        level = 2 if self.abandon.is_set() else (1 if self.requested else 0)
        if level > self._announced:
            self._announced = level
            self._announce(_notice(self.reason, abandoned=level == 2))


def _notice(reason: str | None, *, abandoned: bool) -> str:
    if abandoned:
        return f"{reason}: stopping now; the epoch in progress is discarded"
    if reason == "Ctrl-C":
        return ("Ctrl-C: stopping at the end of this epoch (its checkpoint is kept); Ctrl-C "
                "again to stop now, discarding the epoch in progress")
    return f"{reason}: stopping at the end of this epoch"


@contextmanager
def stop_on_signals(grace_seconds: float, *, sigint: bool = False,
                    time_limit: TimeLimit | None = None,
                    announce: Announce | None = None) -> Iterator[StopControl]:
    """Within the block, SIGTERM (and, with ``sigint``, Ctrl-C) asks the returned
    ``StopControl`` to stop; the previous handlers come back after it."""
    stop = StopControl(grace_seconds, time_limit=time_limit, announce=announce)
    previous = {}
    # Handlers can only be set in the main thread; elsewhere only the time limit stops.
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, stop.on_sigterm)
        if sigint:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, stop.on_sigint)
    stop.watch()
    try:
        yield stop
    finally:
        stop.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
