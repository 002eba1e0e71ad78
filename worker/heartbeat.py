"""A claimed run's lease, kept alive while this worker prepares and trains it."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from gradlab.store import runs
from gradlab.store.session import session_scope
from gradlab.worker import metrics as worker_metrics

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews the lease every third of it; ``lost`` is set once the lease moved on."""

    def __init__(self, factory: sessionmaker[Session], run_id: str, owner: str,
                 lease_seconds: int) -> None:
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self._factory, self._run_id, self._owner = factory, run_id, owner
        self._lease = lease_seconds
        self._stop = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        interval = max(0.5, self._lease / 3)
        while not self._stop.wait(interval):
            try:
                with session_scope(self._factory) as session:
                    alive = runs.heartbeat(
                        session, self._run_id, self._owner, lease_seconds=self._lease
                    )
            except Exception as exc:  # a database blip: try again next beat, lease has slack
                log.warning("heartbeat for run %s failed: %s", self._run_id, exc)
                worker_metrics.HEARTBEATS.labels("failed").inc()
                continue
            worker_metrics.HEARTBEATS.labels("ok" if alive else "lost").inc()
            if not alive:
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop.set()
