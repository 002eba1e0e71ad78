"""Worker process start-up: share the GPUs out before fork, pin each child to one after.

The parent never touches CUDA (see ``devices``); each child narrows ``CUDA_VISIBLE_DEVICES``
to its own GPU and drops the database connections it inherited.
"""

from __future__ import annotations

import logging
import os
import signal

from celery.signals import setup_logging, worker_init, worker_process_init, worker_shutting_down

from gradlab.observability.logs import configure_logging
from gradlab.settings import get_worker_settings
from gradlab.worker import devices, process_state

log = logging.getLogger(__name__)


def parent_publishes_gpus(**_: object) -> None:
    # In the parent, before the pool forks: record the GPUs to share out, without CUDA.
    gpus = devices.publish_gpus_to_children()
    log.info("gradlab worker: %s", f"GPUs {gpus}" if gpus else "CPU mode")


def child_pins_gpu_and_drops_inherited_connections(**_: object) -> None:
    from billiard.process import current_process

    index = getattr(current_process(), "index", None) or 0
    pinned = devices.pin_child(index)
    process_state.reset(device=devices.child_device(get_worker_settings().device, pinned))
    log.info(
        "child %d pid %d: device %s (CUDA_VISIBLE_DEVICES=%s)",
        index,
        os.getpid(),
        pinned,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def logs_as_configured(**_: object) -> None:
    # Connected, this replaces Celery's own logging set-up: JSON lines or text, per settings.
    settings = get_worker_settings()
    configure_logging(settings.log_format, settings.log_level)


def parent_tells_children_to_stop(how: str = "Warm", **_: object) -> None:
    """On a warm shutdown (SIGTERM to the main process only, as Kubernetes sends it), tell the
    pool's children, so a child training a run hands it back within the grace period instead
    of the main process waiting for the run to finish (hours) or being killed mid-run."""
    from billiard.process import active_children

    if how != "Warm":
        return
    for child in active_children():
        if child.pid is not None:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue


def connect() -> None:
    """Connect the handlers (weakly held by Celery; these are module functions, kept alive)."""
    setup_logging.connect(logs_as_configured)
    worker_init.connect(parent_publishes_gpus)
    worker_process_init.connect(child_pins_gpu_and_drops_inherited_connections)
    worker_shutting_down.connect(parent_tells_children_to_stop)
