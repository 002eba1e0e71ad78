"""``/healthz`` (process alive), ``/readyz`` (database and broker reachable), ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.database_gauges import DatabaseGauges
from gradlab.api.schemas import HealthRead, ReadinessRead
from gradlab.observability.prometheus import exposition
from gradlab.settings import ServerSettings
from gradlab.store import health as store_health

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


def _check_broker(settings: ServerSettings) -> str:
    if not settings.broker_url:
        return "not used (embedded mode)"
    from kombu.connection import Connection  # celery's transport library; only needed with a broker

    try:
        with Connection(  # type: ignore[no-untyped-call]  # kombu is untyped
            settings.broker_url, connect_timeout=BROKER_TIMEOUT_SECONDS
        ) as conn:
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


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: runs, queue and worker heartbeats from the database; request latency,
    dispatch failures, cache and event streams summed over every API process."""
    gauges = DatabaseGauges(request.app.state.session_factory)
    body, media_type = await run_in_threadpool(exposition, [gauges])
    return Response(body, media_type=media_type)
