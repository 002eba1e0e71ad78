"""The Celery app: long training tasks, at-least-once delivery, the database as the record.

Start a worker with ``gradlab worker`` (or ``celery -A gradlab.worker.celery_app worker``).
Settings, and why:
- JSON only; task arguments are run ids, never objects.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a run whose worker dies is redelivered
  (the database caps attempts); ``worker_prefetch_multiplier=1``: a child reserves one run.
- results ignored: Postgres holds every epoch and the outcome.
- broker visibility timeout above the longest run, so Redis does not redeliver a task that is
  still training (the database lease would refuse the duplicate anyway).
- ``worker_cancel_long_running_tasks_on_connection_loss``: after a broker blip the message
  comes back; the run itself is resumed from its checkpoint by whoever claims it next.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

from gradlab.settings import Settings, get_settings
from gradlab.worker import devices
from gradlab.worker.dispatch import TRAIN_TASK

log = logging.getLogger(__name__)

REAP_TASK = "gradlab.reap_lost_runs"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # Tasks are imported by the worker only: the API sends by name and never loads torch.
    app = Celery(
        "gradlab", broker=settings.broker_url or "memory://", include=["gradlab.worker.tasks"]
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.celery_queue,
        task_routes={
            TRAIN_TASK: {"queue": settings.celery_queue},
            REAP_TASK: {"queue": settings.celery_queue},
        },
        worker_concurrency=devices.worker_concurrency(None),
        worker_hijack_root_logger=False,
        # `celery worker -B` (`gradlab worker --beat`, one worker per cluster) runs the reaper.
        beat_schedule={
            "reap-lost-runs": {
                "task": REAP_TASK,
                "schedule": max(5.0, settings.lease_seconds / 2),
                "options": {"expires": max(5.0, settings.lease_seconds / 2)},
            }
        },
    )
    if devices.visible_gpus():
        # A fresh child (and CUDA context) per run: no fragmentation carried between runs.
        app.conf.worker_max_tasks_per_child = 1
    return app


app = make_celery()


@worker_init.connect
def _parent_publishes_gpus(**_: object) -> None:
    # In the parent, before the pool forks: record the GPUs to share out, without CUDA.
    gpus = devices.publish_gpus_to_children()
    log.info("gradlab worker: %s", f"GPUs {gpus}" if gpus else "CPU mode")


@worker_process_init.connect
def _child_pins_gpu_and_drops_inherited_connections(**_: object) -> None:
    from billiard.process import current_process

    from gradlab.worker import tasks

    index = getattr(current_process(), "index", None) or 0
    pinned = devices.pin_child(index)
    tasks.reset_process_state(device=devices.child_device(get_settings().device, pinned))
    log.info(
        "child %d pid %d: device %s (CUDA_VISIBLE_DEVICES=%s)",
        index,
        os.getpid(),
        pinned,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
