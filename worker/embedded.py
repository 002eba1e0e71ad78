"""The embedded local worker of ``gradlab serve``: no broker, the database is the queue.

A separate process (multiprocessing *spawn*: nothing of the API process, no CUDA state, no
pooled connection, is inherited) that loops: requeue runs whose worker is gone, take the
oldest queued run, train it with the same ``execute_run`` as the Celery task (the loop of
``queue_loop``, which ``gradlab study run`` drives too). Queued runs live
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
from gradlab.observability.logs import configure_logging
from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.store.base import utcnow
from gradlab.store.session import engine_from_settings, make_session_factory, session_scope
from gradlab.worker.reaper import reap
from gradlab.worker.stopping import StopControl, stop_on_signals

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0


class LocalWorker:
    """Starts and stops the local worker process; ``dispatcher`` wakes it on new runs."""

    def __init__(self, settings: WorkerSettings, *, poll_seconds: float = DEFAULT_POLL_SECONDS):
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


def _owner_is_dead_local_process(owner: str | None, *, other_hosts: bool = False) -> bool:
    """True for a lease written by a process on this host that no longer exists (with
    ``other_hosts``, also for any lease written on another host)."""
    if not owner or "#" not in owner:
        return False
    name = owner.rsplit("#", 1)[0]
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname():
        return other_hosts
    if not pid.isdigit():
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


def requeue_orphans(session: Session, *, other_hosts: bool = False) -> list[str]:
    """Runs left running by a dead process on this machine (a killed ``gradlab serve``) go
    back to the queue now instead of after their lease expires. ``other_hosts``: those left
    running on any other machine too, for a database no other machine uses (a study folder
    copied here from a machine that was stopped outright)."""
    now = utcnow()
    orphans = [
        (run_id, owner)
        for run_id, owner in runs.running_runs_with_owners(session)
        if owner is not None and _owner_is_dead_local_process(owner, other_hosts=other_hosts)
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
    settings = WorkerSettings(**settings_dict)
    configure_logging(settings.log_format, settings.log_level)
    engine = engine_from_settings(settings)
    factory: sessionmaker[Session] = make_session_factory(engine)
    with session_scope(factory) as session:
        orphans = requeue_orphans(session)
    if orphans:
        log.info("resuming %d run(s) interrupted by an earlier shutdown", len(orphans))
    # SIGTERM (from LocalWorker.stop) hands a run in training back at its next safe point
    # within the grace period, then the loop ends; Ctrl-C (the terminal's, sent to the whole
    # process group) asks the same at the end of the epoch, and `gradlab serve` follows it
    # with SIGTERM.
    try:
        with stop_on_signals(settings.shutdown_grace_seconds, sigint=True) as graceful:
            _serve_queue(factory, settings, stop, wake, poll_seconds, graceful)
    finally:
        engine.dispose()


def _serve_queue(
    factory: sessionmaker[Session], settings: WorkerSettings, stop: Any, wake: Any,
    poll_seconds: float, graceful: StopControl,
) -> None:
    """Train the oldest queued run, one claim at a time, until told to stop."""
    from gradlab.core.data import load_cifar, resolve_data_dir
    from gradlab.worker.queue_loop import train_queued

    def load_data(dataset: str) -> Any:
        return load_cifar(resolve_data_dir(settings.data_dir), dataset)

    parent = multiprocessing.parent_process()

    def serving() -> bool:
        # An orphaned worker (its `gradlab serve` was killed) finishes its run, then leaves.
        return not (stop.is_set() or graceful.requested) and (
            parent is None or parent.is_alive())

    def idle() -> bool:
        wake.wait(poll_seconds)
        wake.clear()
        return serving()

    def reap_lost() -> None:
        reap(factory, EmbeddedDispatcher(), settings, resend_queued=False)

    while serving():
        try:
            train_queued(factory, settings, load_data, graceful, idle=idle, between=reap_lost)
        except Exception:  # e.g. the database is briefly unreachable: keep serving
            log.exception("local worker loop failed; retrying")
            idle()
