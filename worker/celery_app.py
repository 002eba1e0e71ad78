"""The worker's Celery app: the settings every gradlab app shares (``gradlab.dispatch.queues``)
plus what only a worker needs: its tasks, one child per GPU, the reaper's schedule.

Start a training worker with ``gradlab worker`` (or ``celery -A gradlab.worker.celery_app
worker``) and, once per deployment, the reaper with ``gradlab reaper``.
"""

from __future__ import annotations

from celery import Celery

from gradlab.dispatch.queues import REAP_TASK, celery_settings, reap_interval_seconds
from gradlab.settings import WorkerSettings, get_worker_settings
from gradlab.worker import devices, lifecycle, tasks


def make_celery(settings: WorkerSettings | None = None) -> Celery:
    settings = settings or get_worker_settings()
    app = Celery("gradlab", broker=settings.broker_url or "memory://")
    app.conf.update(celery_settings(settings))
    interval = reap_interval_seconds(settings)
    app.conf.update(
        worker_concurrency=devices.worker_concurrency(
            None, per_gpu=devices.children_per_gpu(settings)),
        worker_hijack_root_logger=False,
        # The reap pass as a Celery task, for a deployment that runs `celery ... beat` with a
        # consumer of the reaper queue. `gradlab reaper` runs the same pass on a timer of its
        # own instead (worker/reaper_service.py: it must not need the broker it repairs).
        beat_schedule={
            "reap-lost-runs": {
                "task": REAP_TASK,
                "schedule": interval,
                "options": {"expires": interval},
            }
        },
    )
    if devices.visible_gpus():
        # A fresh child (and CUDA context) per run: no fragmentation carried between runs.
        app.conf.worker_max_tasks_per_child = 1
    tasks.register(app)
    return app


app = make_celery()
lifecycle.connect()
