"""Gauges read from the database when Prometheus scrapes: runs by state, queue depth, the age
of each training worker's last heartbeat.

Every API process answers them the same (the database is shared), so they are correct however
many API processes there are and whichever one is scraped; nothing is kept between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store.metrics import read_service_gauges


class DatabaseGauges(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        with self._factory() as session:
            gauges = read_service_gauges(session)
        runs = GaugeMetricFamily(
            "gradlab_runs", "Runs in the database by status.", labels=["status"]
        )
        for status, count in gauges.runs_by_status.items():
            runs.add_metric([status], count)
        yield runs
        experiments = GaugeMetricFamily(
            "gradlab_experiments", "Experiments in the database by status.", labels=["status"]
        )
        for status, count in gauges.experiments_by_status.items():
            experiments.add_metric([status], count)
        yield experiments
        yield GaugeMetricFamily(
            "gradlab_queue_depth",
            "Runs waiting for a worker (queued in the database, the record of truth; the "
            "broker's list shrinks as soon as a worker reserves a task).",
            value=gauges.runs_by_status.get("queued", 0),
        )
        yield GaugeMetricFamily(
            "gradlab_queue_oldest_age_seconds",
            "Seconds the oldest queued run has waited (0 when none waits).",
            value=gauges.oldest_queued_seconds,
        )
        ages = GaugeMetricFamily(
            "gradlab_worker_heartbeat_age_seconds",
            "Seconds since each training worker (host:pid) last renewed a running run's lease.",
            labels=["worker"],
        )
        for worker, age in sorted(gauges.heartbeat_age_by_worker.items()):
            ages.add_metric([worker], age)
        yield ages
