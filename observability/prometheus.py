"""Prometheus exposition for processes that share counters through files.

prometheus-client keeps a counter in process memory, so with several API processes (uvicorn
``--workers``) or Celery's prefork children a scrape would see one process's share. In
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the first import of
prometheus_client) every process writes its values to files there and a scrape sums them. The
launchers (``gradlab api``, ``gradlab serve``, ``gradlab worker``) prepare the folder with
``metrics_folder``, which must not import prometheus_client itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gradlab.observability.metrics_folder import MULTIPROC_ENV


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _ThisProcess(Collector):
    """The default registry's metrics (this process only), as one collector among others."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition(extra: Iterable[Collector] = ()) -> tuple[bytes, str]:
    """The text format of every process's metrics (or this one's) plus ``extra`` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_metrics(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a daemon thread (every process's, in multiprocess
    mode): for processes without an HTTP server of their own, such as a Celery worker."""
    from prometheus_client import start_http_server

    registry = REGISTRY
    if multiprocess_mode():
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    start_http_server(port, addr=addr, registry=registry)
