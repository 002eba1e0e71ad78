"""The training worker's Prometheus metrics: epoch times and lease heartbeats.

Labelled by model family (``vgg38-bn-res``), never by run id, so the number of series stays
small however many runs a cluster trains. Celery's prefork children each observe into files
shared with the worker's parent (multiprocess mode, prepared by ``gradlab worker``), which
serves them on ``GRADLAB_WORKER_METRICS_PORT``; under ``gradlab serve`` the local worker
shares the API's folder, so the API's ``/metrics`` includes them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EPOCH_SECONDS = Histogram(
    "gradlab_epoch_duration_seconds",
    "Time to train and validate one epoch (the epoch's own measurement), by model family.",
    ["family"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
)
EPOCH_WRITE_SECONDS = Histogram(
    "gradlab_epoch_write_seconds",
    "Time to write one epoch (metrics, gradient flow, checkpoint, progress) in its transaction,"
    " retries included, by model family.",
    ["family"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HEARTBEATS = Counter(
    "gradlab_worker_heartbeats",
    "Lease renewals by training workers, by outcome: ok, failed (database error, retried) or "
    "lost (another worker owns the run now).",
    ["outcome"],
)
RUNS_FINISHED = Counter(
    "gradlab_runs_finished",
    "Runs this worker finished, by model family and final status.",
    ["family", "status"],
)
