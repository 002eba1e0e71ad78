"""Task names, queues and the Celery settings shared by the producers and the worker.

Runs go to the training queue (``GRADLAB_CELERY_QUEUE``); the reaper's messages go to a queue
of their own (``<queue>.reaper``), consumed by a process that never trains, so they are not
stuck behind runs (and do not expire) while every GPU is busy.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from gradlab.settings import ServerSettings, WorkerSettings

TRAIN_TASK = "gradlab.train_run"
REAP_TASK = "gradlab.reap_lost_runs"


def reaper_queue(settings: ServerSettings) -> str:
    return f"{settings.celery_queue}.reaper"


def reap_interval_seconds(settings: WorkerSettings) -> float:
    """How often the reaper looks for lost runs: twice per lease, at most every 5 s."""
    return max(5.0, settings.lease_seconds / 2)


def celery_settings(settings: ServerSettings) -> dict[str, Any]:
    """Settings every gradlab Celery app shares (producer or worker), and why:

    - JSON only; task arguments are run ids, never objects; results ignored (the database
      holds every epoch and the outcome).
    - ``task_acks_late`` + ``task_reject_on_worker_lost``: a run whose worker dies is
      redelivered (the database caps attempts); ``worker_prefetch_multiplier=1``: a child
      reserves one run.
    - broker visibility timeout above the longest run, so Redis does not redeliver a task that
      is still training (the database lease would refuse the duplicate anyway).
    - ``worker_cancel_long_running_tasks_on_connection_loss``: after a broker blip the message
      comes back; the run resumes from its checkpoint by whoever claims it next.
    """
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_transport_options": {"visibility_timeout": settings.broker_visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.celery_queue,
        "task_routes": {
            TRAIN_TASK: {"queue": settings.celery_queue},
            REAP_TASK: {"queue": reaper_queue(settings)},
        },
    }


def producer_app(settings: ServerSettings) -> Celery:
    """A Celery app that only sends (by task name): no task modules, no worker signals."""
    app = Celery("gradlab", broker=settings.broker_url or "memory://")
    app.conf.update(celery_settings(settings))
    return app
