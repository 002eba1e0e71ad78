"""``/healthz`` (process alive), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.request_metrics import RequestMetrics
from gradlab.api.response_cache import ResponseCache
from gradlab.api.schemas import HealthRead, ReadinessRead
from gradlab.settings import Settings
from gradlab.store import health as store_health
from gradlab.store.models import EXPERIMENT_STATUSES, RUN_STATUSES

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 2.0
# What /readyz says about a dependency that does not answer: which one, never where it is
# (the error's text would name hosts, ports, users and databases; it goes to the log).
UNREACHABLE = "unreachable"


@router.get("/healthz", response_model=HealthRead)
async def healthz() -> HealthRead:
    """The process is alive (checks nothing else)."""
    return HealthRead()


def _check_database(factory: sessionmaker[Session]) -> str:
    try:
        with factory() as session:
            store_health.ping(session)
    except Exception as exc:
        log.warning("readiness: the database does not answer: %s", exc)
        return UNREACHABLE
    return "ok"


def _check_broker(settings: Settings) -> str:
    if not settings.broker_url:
        return "not used (embedded mode)"
    from kombu import Connection  # celery's transport library; only needed with a broker

    try:
        with Connection(settings.broker_url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("readiness: the broker does not answer: %s", exc)
        return UNREACHABLE
    return "ok"


@router.get(
    "/readyz",
    response_model=ReadinessRead,
    responses={503: {"model": ReadinessRead, "description": "a dependency is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and, in cluster mode, the broker accepts a connection;
    otherwise 503 naming what is down ("unreachable"), without its address."""
    state = request.app.state
    checks = {
        "database": await run_in_threadpool(_check_database, state.session_factory),
        "broker": await run_in_threadpool(_check_broker, state.settings),
    }
    ready = all(v == "ok" or v.startswith("not used") for v in checks.values())
    body = ReadinessRead(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _counts(factory: sessionmaker[Session]) -> tuple[dict[str, int], dict[str, int]]:
    with factory() as session:
        return store_health.count_by_status(session)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(
    runs: dict[str, int],
    experiments: dict[str, int],
    requests: RequestMetrics,
    cache: ResponseCache,
) -> str:
    """The Prometheus text exposition format (version 0.0.4) of gradlab's gauges and counters."""
    lines = [
        "# HELP gradlab_runs Runs in the database by status.",
        "# TYPE gradlab_runs gauge",
        *(f'gradlab_runs{{status="{s}"}} {runs.get(s, 0)}' for s in RUN_STATUSES),
        "# HELP gradlab_experiments Experiments in the database by status.",
        "# TYPE gradlab_experiments gauge",
        *(
            f'gradlab_experiments{{status="{s}"}} {experiments.get(s, 0)}'
            for s in EXPERIMENT_STATUSES
        ),
        "# HELP gradlab_http_requests_total HTTP requests answered by this process.",
        "# TYPE gradlab_http_requests_total counter",
    ]
    for (method, route, code), count in sorted(requests.requests.items()):
        lines.append(
            f'gradlab_http_requests_total{{method="{method}",route="{_label(route)}",'
            f'status="{code}"}} {count}'
        )
    lines += [
        "# HELP gradlab_http_request_seconds_total Seconds spent answering requests.",
        "# TYPE gradlab_http_request_seconds_total counter",
    ]
    for (method, route), seconds in sorted(requests.seconds.items()):
        lines.append(
            f'gradlab_http_request_seconds_total{{method="{method}",route="{_label(route)}"}} '
            f"{seconds:.6f}"
        )
    lines += [
        "# HELP gradlab_dispatch_failures_total Runs committed but not dispatched (still queued).",
        "# TYPE gradlab_dispatch_failures_total counter",
        f"gradlab_dispatch_failures_total {requests.dispatch_failures}",
        "# HELP gradlab_response_cache_hits_total Finished-experiment views served from memory.",
        "# TYPE gradlab_response_cache_hits_total counter",
        f"gradlab_response_cache_hits_total {cache.hits}",
        "# HELP gradlab_response_cache_misses_total Views rendered from the database.",
        "# TYPE gradlab_response_cache_misses_total counter",
        f"gradlab_response_cache_misses_total {cache.misses}",
        "# HELP gradlab_response_cache_bytes Bytes held by the response cache.",
        "# TYPE gradlab_response_cache_bytes gauge",
        f"gradlab_response_cache_bytes {cache.size_bytes}",
    ]
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics: runs and experiments by status, request counts, cache use."""
    state = request.app.state
    runs, experiments = await run_in_threadpool(_counts, state.session_factory)
    body = render_prometheus(runs, experiments, state.request_metrics, state.response_cache)
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")
