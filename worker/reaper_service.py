"""``gradlab reaper``: the reap pass (``worker.reaper.reap``) on a timer of its own.

Run exactly one per deployment. It used to be Celery beat sending each pass through the broker
to a consumer of its own queue, so a broker that was down (or had lost its data and not yet
been reconnected to) also stopped the one process whose job is to recover from that; with the
broker down it did not even start. Now the broker is only where a pass sends runs: the timer
runs whether or not the broker answers, and a pass that fails (the database down) is logged
and tried again at the next tick. SIGTERM or SIGINT ends it between passes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from gradlab.dispatch.dispatchers import RunDispatcher, make_dispatcher
from gradlab.dispatch.queues import reap_interval_seconds
from gradlab.settings import WorkerSettings
from gradlab.store.session import engine_from_settings, make_session_factory
from gradlab.worker.reaper import reap

log = logging.getLogger(__name__)


def serve_reaper(settings: WorkerSettings, stop: threading.Event | None = None) -> None:
    """A pass now and every ``reap_interval_seconds`` until ``stop`` is set (or a signal)."""
    engine = engine_from_settings(settings)
    factory = make_session_factory(engine)
    dispatcher = make_dispatcher(settings)
    interval = reap_interval_seconds(settings)
    stop = stop or threading.Event()
    try:
        with _stop_on_signals(stop):
            log.info("reaper ready. a pass every %.0f s", interval)
            while not stop.is_set():
                reap_once(factory, dispatcher, settings)
                stop.wait(interval)
    finally:
        close = getattr(dispatcher, "close", None)
        if callable(close):
            close()
        engine.dispose()
    log.info("reaper stopped")


def reap_once(factory: sessionmaker[Session], dispatcher: RunDispatcher,
              settings: WorkerSettings) -> list[str]:
    """One pass; any failure is logged and left to the next pass (nothing is lost: the runs
    stay in the database, queued or with a lease that keeps expiring)."""
    try:
        return reap(factory, dispatcher, settings)
    except Exception:
        log.exception("reap pass failed; the next one comes in %.0f s",
                      reap_interval_seconds(settings))
        return []


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (main thread only; elsewhere the caller stops it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(*_: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
