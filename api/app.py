"""The FastAPI app factory: settings, database, dispatcher, error handlers and routers.

``create_app(settings, dispatcher)`` builds a complete app without touching globals, so tests
and ``gradlab serve`` can run several side by side. Without a dispatcher it makes the
configured one (Celery with a broker, else the embedded local worker) at startup.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from gradlab.api.errors import install_error_handlers
from gradlab.api.request_limits import RequestLimitsMiddleware
from gradlab.api.request_metrics import RequestMetrics, RequestMetricsMiddleware
from gradlab.api.response_cache import ResponseCache
from gradlab.api.routes import experiments, health, studies
from gradlab.dispatch.dispatchers import RunDispatcher, make_dispatcher
from gradlab.settings import Settings, get_settings
from gradlab.store.session import make_engine, make_session_factory

log = logging.getLogger(__name__)

DESCRIPTION = """
Deep-network optimisation studies as a service: post an experiment spec (depth x BatchNorm x
residual x hyperparameters x seeds), workers train one run per seed, and every epoch's metrics
and per-layer gradient flow can be read while it runs.
"""


def _operation_id(route: APIRoute) -> str:
    # "experiments-gradflow": readable method names in generated clients.
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _package_version() -> str:
    try:
        return version("gradlab")
    except PackageNotFoundError:
        return "0.0.0"


def _document_auth_as_configured(app: FastAPI, auth_required: bool) -> None:
    """With auth off no route asks for a token: the schema says so (no security schemes)."""
    if auth_required:
        return
    generate = app.openapi

    def openapi_without_auth() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.pop("security", None)
            schema.get("components", {}).pop("securitySchemes", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi_without_auth  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None, dispatcher: RunDispatcher | None = None
) -> FastAPI:
    """A gradlab API app on ``settings`` (default: from GRADLAB_* variables)."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        made_here = False
        if getattr(app.state, "dispatcher", None) is None:
            app.state.dispatcher = make_dispatcher(settings)
            made_here = True
        try:
            yield
        finally:
            close = getattr(app.state.dispatcher, "close", None)
            if made_here and callable(close):
                close()
            engine.dispose()

    app = FastAPI(
        title="gradlab",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.dispatcher = dispatcher
    app.state.response_cache = ResponseCache()
    app.state.request_metrics = RequestMetrics()

    install_error_handlers(app)
    # The last added is the outermost: requests refused for their size or text are counted.
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.request_metrics)
    app.include_router(experiments.router)
    app.include_router(health.router)
    app.include_router(studies.router)
    _document_auth_as_configured(app, settings.auth_required)
    return app
