"""Per-request latency for ``/metrics`` and one log line per request, from a plain ASGI
middleware (no per-request task).

Labels are the route template (``/experiments/{experiment_id}``), not the raw path, so the
number of series stays bounded whatever ids clients ask for. Event streams are left out of
the latency histogram: their "latency" is how long a browser kept the page open.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradlab.api.prometheus_metrics import HTTP_REQUEST_SECONDS

log = logging.getLogger("gradlab.api.requests")

# Path parameters worth carrying into the request's log line.
_LOGGED_IDS = ("experiment_id", "study_id", "run_id")


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if not route.endswith("/events"):
                HTTP_REQUEST_SECONDS.labels(scope["method"], route, str(status)).observe(seconds)
            ids = {k: v for k, v in (scope.get("path_params") or {}).items() if k in _LOGGED_IDS}
            log.info(
                "%s %s %d",
                scope["method"],
                route,
                status,
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    **ids,
                },
            )
