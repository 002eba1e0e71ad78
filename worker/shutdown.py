"""Stopping a worker without losing its run or leaving it to the lease (SIGTERM: a Kubernetes
eviction, a rolling update, ``gradlab serve`` stopping).

On a stop request the run is handed back at the next safe point within the grace period
(``GRADLAB_SHUTDOWN_GRACE_SECONDS``): at the end of the epoch in progress, after its metrics,
gradient flow and checkpoint are written, when that end comes in time; otherwise at once, and
the epoch in progress is redone from the last checkpoint by whoever resumes the run. Handed
back means queued again with this attempt not counted, and sent to the queue again, so another
worker resumes it now instead of after the lease.

The signal handler only notes the time; a watcher thread decides when to interrupt the main
thread, because a signal handler must not take locks or start threads. It interrupts by
simulating SIGTERM in the main thread (``_thread.interrupt_main``: the handler runs at the next
Python instruction, so within one training step) with a flag that makes the handler raise
``KeyboardInterrupt``; SIGINT would not do, a Celery pool child ignores it.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Kept free at the end of the grace period to write the hand-back (one small UPDATE) and exit.
HAND_BACK_MARGIN_SECONDS = 2.0
WATCH_INTERVAL_SECONDS = 0.2


class StopRequested(Exception):
    """Raised at a safe point (an epoch just written) once a stop was requested."""


class GracefulStop:
    """A process's stop request and the watcher that enforces its grace period."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.requested_at: float | None = None  # written by the signal handler only
        self._interrupt_now = False
        self._epoch_ends_at: float | None = None
        self._handing_back = threading.Event()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def request(self, *_: Any) -> None:
        """Ask to stop: the SIGTERM handler. It only notes the time, unless the watcher sent
        the signal to interrupt the main thread now."""
        if self._interrupt_now:
            self._interrupt_now = False
            raise KeyboardInterrupt("the grace period does not leave time for a safe point")
        if self.requested_at is None:
            self.requested_at = time.monotonic()

    def epoch_started(self, expected_seconds: float) -> None:
        """An epoch just began and should take about this long (the last one's duration)."""
        self._epoch_ends_at = time.monotonic() + expected_seconds

    def begin_hand_back(self) -> None:
        """The run is being handed back: from now on nothing may interrupt it."""
        self._handing_back.set()

    def watch(self) -> None:
        """Start the watcher (once); it interrupts the main thread when waiting for the safe
        point would pass the grace period."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="graceful-stop",
                                             daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._closed.set()

    def _must_interrupt(self, now: float) -> bool:
        assert self.requested_at is not None
        deadline = self.requested_at + max(0.0, self.grace_seconds - HAND_BACK_MARGIN_SECONDS)
        if now >= deadline:
            return True
        # The epoch in progress would end after the deadline: waiting for it gains nothing.
        return self._epoch_ends_at is not None and self._epoch_ends_at > deadline

    def _watch(self) -> None:
        while not self._closed.wait(WATCH_INTERVAL_SECONDS):
            if self.requested_at is None or self._handing_back.is_set():
                continue
            if self._must_interrupt(time.monotonic()):
                self._interrupt_now = True
                _thread.interrupt_main(signal.SIGTERM)
                return


@contextmanager
def stop_on_sigterm(grace_seconds: float) -> Iterator[GracefulStop]:
    """Within the block, SIGTERM requests a graceful stop (main thread only); the previous
    handler comes back after it."""
    stop = GracefulStop(grace_seconds)
    previous = signal.signal(signal.SIGTERM, stop.request)
    stop.watch()
    try:
        yield stop
    finally:
        stop.close()
        signal.signal(signal.SIGTERM, previous)
