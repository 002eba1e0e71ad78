"""Claim a run from the database and train it: the body shared by the Celery task, the
embedded worker and ``gradlab study run``.

Never trusts whoever handed it the run id: the database lease decides whether this process
trains it. With a pack size above 1 (``pack_size_on`` the device) the claim also takes up to
``pack_size - 1`` queued runs that fuse with it (``runs.claim_companions``); either way the
claimed runs train as one ``PackAttempt`` (a run alone is a pack of one), each an ``Attempt``
that owns its lease, heartbeat, checkpoints and hand-back. How each ended is an
``AttemptOutcome``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.environment import resolve_device
from gradlab.observability.logs import bind_log_context
from gradlab.settings import WorkerSettings, get_worker_settings
from gradlab.store import runs
from gradlab.store.checkpoint_store import CheckpointStore, open_checkpoint_store
from gradlab.store.session import session_scope
from gradlab.worker.attempt import Attempt, DataSource
from gradlab.worker.checkpointing import CheckpointCadence
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.pack_attempt import PackAttempt, TrainingLoop
from gradlab.worker.stopping import StopControl

log = logging.getLogger(__name__)

# Runs per fused pack on a GPU when GRADLAB_PACK_SIZE is unset (on the CPU: 1, every run alone).
GPU_PACK_SIZE = 4


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pack_size_on(device: str, settings: WorkerSettings) -> int:
    """``GRADLAB_PACK_SIZE`` when set; else ``GPU_PACK_SIZE`` on a GPU shared by packs, and 1
    on a GPU shared by processes (``GRADLAB_GPU_SHARING=processes``: each child trains one run)
    and on the CPU. On this project's 2-core CPU a pack of 4 VGG38 runs trained 120 images/s
    against 143 for one run alone (``gradlab bench --pack 1,4 --models vgg38 --device cpu``),
    and the smoke study took longer packed than not: packing pays where one run leaves a GPU
    idle, not on a CPU."""
    if settings.pack_size is not None:
        return settings.pack_size
    kind = device.split(":")[0]
    if kind == "auto":
        kind = resolve_device("auto").type
    return GPU_PACK_SIZE if kind == "cuda" and settings.gpu_sharing == "packs" else 1


def execute_run(
    run_id: str,
    session_factory: sessionmaker[Session],
    data: DataSource,
    device: str,
    *,
    settings: WorkerSettings | None = None,
    worker: str | None = None,
    checkpoints: CheckpointStore | None = None,
    cadence: CheckpointCadence | None = None,
    training_loop: TrainingLoop | None = None,
    stop: StopControl | None = None,
    among: Collection[str] | None = None,
) -> dict[str, AttemptOutcome]:
    """Claim and train ``run_id`` (and the runs that pack with it); how each ended here, the
    companions' too: ``run_id`` is always a key (``LOST`` when it was not this worker's).

    ``data(dataset)`` returns the arrays (loaded once per process by the caller's cache).
    ``checkpoints``: the store (default: the one the settings name); ``cadence``: when to
    checkpoint (default ``checkpointing.cadence_for`` the device); ``training_loop``: default
    ``gradlab.core.pack.fit_pack``; ``stop``: the process's stop (signals, a time limit);
    ``among``: the runs companions may be taken from (default: any queued run).
    """
    settings = settings or get_worker_settings()
    store = checkpoints or open_checkpoint_store(settings, session_factory)
    worker = worker or worker_name()
    with session_scope(session_factory) as session:
        claimed = runs.claim_run(session, run_id, worker, lease_seconds=settings.lease_seconds,
                                 max_attempts=settings.max_attempts)
    if claimed is None:
        log.info("run %s is not claimable (finished, leased elsewhere, or missing)", run_id)
        return {run_id: AttemptOutcome.LOST}
    bind_log_context(experiment_id=claimed.experiment_id, run_id=run_id, attempt=claimed.attempt)
    log.info("claimed run %s (attempt %d) as %s", run_id, claimed.attempt, claimed.owner)
    companions = _claim_companions(session_factory, claimed, settings, worker,
                                   pack_size_on(device, settings), among)
    attempts = [Attempt(c, session_factory, settings, store, cadence)
                for c in [claimed, *companions]]
    return PackAttempt(attempts, session_factory, stop, training_loop).run(data, device)


def _claim_companions(
    factory: sessionmaker[Session], claimed: runs.ClaimedRun, settings: WorkerSettings, worker: str,
    pack_size: int, among: Collection[str] | None,
) -> list[runs.ClaimedRun]:
    """The queued runs (of ``among``) that join ``claimed`` in a pack of ``pack_size``."""
    if pack_size <= 1:
        return []
    try:
        with session_scope(factory) as session:
            return runs.claim_companions(
                session, claimed, worker, limit=pack_size - 1,
                lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
                among=among)
    except OperationalError as exc:  # packing is an optimisation: train the run alone
        log.warning("could not look for runs to pack with %s: %s", claimed.run_id, exc)
        return []
