"""The embedded local worker of ``gradlab serve``: no broker, the database is the queue.

A separate process (multiprocessing *spawn*: nothing of the API process, no CUDA state, no
pooled connection, is inherited) that loops: requeue runs whose worker is gone, take the
oldest queued run, train it with the same ``execute_run`` as the Celery task. Queued runs live
in the database, so they survive a restart of ``gradlab serve``; a run interrupted by a
shutdown is handed back and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from gradlab.dispatch.dispatchers import EmbeddedDispatcher
from gradlab.observability.logs import configure_logging, log_context
from gradlab.settings import Settings
from gradlab.store import runs
from gradlab.store.base import utcnow
from gradlab.store.session import engine_from_settings, make_session_factory, session_scope
from gradlab.worker.reaper import reap
from gradlab.worker.shutdown import GracefulStop, stop_on_sigterm

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0


class LocalWorker:
    """Starts and stops the local worker process; ``dispatcher`` wakes it on new runs."""

    def __init__(self, settings: Settings, *, poll_seconds: float = DEFAULT_POLL_SECONDS):
        self._settings = settings
        self._poll = poll_seconds
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = self._ctx.Event()
        self.wake = self._ctx.Event()
        self._process: Any | None = None

    @property
    def dispatcher(self) -> EmbeddedDispatcher:
        return EmbeddedDispatcher(self.wake)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        self._process = self._ctx.Process(
            target=run_local_worker,
            args=(self._settings.model_dump(mode="json"), self._stop, self.wake, self._poll),
            name="gradlab-local-worker",
        )
        self._process.start()

    def stop(self) -> None:
        """Ask it to stop; a run in training is handed back (SIGTERM) within the grace period
        and resumes next time."""
        if self._process is None:
            return
        self._stop.set()
        self.wake.set()
        self._process.join(timeout=1.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(self._settings.shutdown_grace_seconds + 5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = None


def _owner_is_dead_local_process(owner: str | None) -> bool:
    """True for a lease written by a process on this host that no longer exists."""
    if not owner or "#" not in owner:
        return False
    name = owner.rsplit("#", 1)[0]
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process whose parent died too may linger as a zombie until init reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def requeue_orphans(session: Session) -> list[str]:
    """Runs left running by a dead process on this machine (a killed ``gradlab serve``) go
    back to the queue now instead of after their lease expires."""
    now = utcnow()
    orphans = [
        (run_id, owner)
        for run_id, owner in runs.running_runs_with_owners(session)
        if owner is not None and _owner_is_dead_local_process(owner)
    ]
    requeued = [
        run_id
        for run_id, owner in orphans
        if runs.requeue_running(session, run_id, owner=owner, now=now)
    ]
    session.flush()
    return requeued


def run_local_worker(
    settings_dict: dict[str, Any], stop: Any, wake: Any, poll_seconds: float
) -> None:
    """The local worker process's main loop (spawned; takes only picklable arguments)."""
    settings = Settings(**settings_dict)
    configure_logging(settings.log_format, settings.log_level)
    engine = engine_from_settings(settings)
    factory: sessionmaker[Session] = make_session_factory(engine)
    with session_scope(factory) as session:
        orphans = requeue_orphans(session)
    if orphans:
        log.info("resuming %d run(s) interrupted by an earlier shutdown", len(orphans))
    # SIGTERM (from LocalWorker.stop, or the process group's) hands a run in training back at
    # its next safe point within the grace period, then the loop ends.
    try:
        with stop_on_sigterm(settings.shutdown_grace_seconds) as graceful:
            _serve_queue(factory, settings, stop, wake, poll_seconds, graceful)
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()


def _serve_queue(
    factory: sessionmaker[Session], settings: Settings, stop: Any, wake: Any,
    poll_seconds: float, graceful: GracefulStop,
) -> None:
    """Train the oldest queued run, one at a time, until told to stop."""
    from gradlab.core.data import load_cifar, resolve_data_dir
    from gradlab.worker.runner import execute_run

    def load_data(dataset: str) -> Any:
        return load_cifar(resolve_data_dir(settings.data_dir), dataset)

    parent = multiprocessing.parent_process()
    # An orphaned worker (its `gradlab serve` was killed) finishes its run, then leaves.
    while not (stop.is_set() or graceful.requested) and (parent is None or parent.is_alive()):
        try:
            reap(factory, EmbeddedDispatcher(), settings, resend_queued=False)
            with factory() as session:
                queued = runs.find_queued_runs(session, limit=1)
            if queued:
                with log_context(run_id=queued[0]):
                    execute_run(queued[0], factory, load_data, settings.device,
                                settings=settings, stop=graceful)
                continue
        except Exception:  # e.g. the database is briefly unreachable: keep serving
            log.exception("local worker loop failed; retrying")
        wake.wait(poll_seconds)
        wake.clear()
