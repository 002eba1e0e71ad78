"""The FastAPI app factory: settings, database, dispatcher, error handlers and routers.

``create_app(settings, dispatcher)`` builds a complete app without touching globals, so tests
and ``gradlab serve`` can run several side by side. Without a dispatcher it makes the
configured one (Celery with a broker, else the embedded local worker) at startup.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.auth import get_viewer
from gradlab.api.change_feed import ChangeFeed
from gradlab.api.errors import install_error_handlers
from gradlab.api.render_limits import RenderLimiter
from gradlab.api.request_limits import RequestLimitsMiddleware
from gradlab.api.request_metrics import RequestMetricsMiddleware
from gradlab.api.response_cache import ResponseCache
from gradlab.api.routes import dashboard, events, experiments, health, studies
from gradlab.dispatch.dispatchers import RunDispatcher, make_dispatcher
from gradlab.observability.logs import configure_logging
from gradlab.settings import ApiSettings, get_api_settings
from gradlab.store import users
from gradlab.store.checkpoint_store import open_checkpoint_store
from gradlab.store.session import engine_from_settings, make_session_factory, session_scope

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


def _register_admin_token(factory: sessionmaker[Session], token: str) -> None:
    # Every API replica tries; one registers it, the others find it (or lose the race on the
    # unique hash). A database that is not up yet must not stop the API from starting.
    try:
        with session_scope(factory) as session:
            if users.ensure_token(session, "admin", token, admin=True):
                log.info("registered the admin token from GRADLAB_ADMIN_TOKEN")
    except Exception as exc:
        log.warning("could not register GRADLAB_ADMIN_TOKEN: %s", exc)


def create_app(
    settings: ApiSettings | None = None, dispatcher: RunDispatcher | None = None
) -> FastAPI:
    """A gradlab API app on ``settings`` (default: from GRADLAB_* variables)."""
    settings = settings or get_api_settings()
    engine = engine_from_settings(settings)
    # With auth on, the schema needs a token like every data route, and the interactive pages
    # are off: they load their scripts from a CDN, on the origin where the dashboard keeps the
    # token. With auth off (one user, no token to take) they are served as FastAPI makes them.
    pages_off = settings.auth_required
    app = FastAPI(
        title="gradlab",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=_lifespan(settings, engine),
        generate_unique_id_function=_operation_id,
        openapi_url=None if pages_off else "/openapi.json",
        docs_url=None if pages_off else "/docs",
        redoc_url=None if pages_off else "/redoc",
    )
    _attach_state(app, settings, engine, dispatcher)
    _install_routes(app, settings)
    return app


def _lifespan(
    settings: ApiSettings, engine: Engine
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Startup: the configured dispatcher unless one was given, the admin token registered.
    Shutdown: the change feed, a dispatcher made here, the engine's connections."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        made_here = False
        if getattr(app.state, "dispatcher", None) is None:
            app.state.dispatcher = make_dispatcher(settings)
            made_here = True
        if settings.admin_token:
            await run_in_threadpool(_register_admin_token, app.state.session_factory,
                                    settings.admin_token)
        try:
            yield
        finally:
            await app.state.change_feed.close()
            close = getattr(app.state.dispatcher, "close", None)
            if made_here and callable(close):
                close()
            engine.dispose()

    return lifespan


def _attach_state(app: FastAPI, settings: ApiSettings, engine: Engine,
                  dispatcher: RunDispatcher | None) -> None:
    """What the routes reach through ``app.state``: settings, database, checkpoint store,
    dispatcher, response cache, render limiter and change feed."""
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    # The API deletes checkpoint bytes when an experiment is deleted; a wrong setting fails here.
    app.state.checkpoint_store = open_checkpoint_store(settings, app.state.session_factory)
    app.state.dispatcher = dispatcher
    app.state.response_cache = ResponseCache()
    app.state.render_limiter = RenderLimiter(
        settings.render_concurrency_per_user, settings.render_backlog_per_user
    )
    app.state.change_feed = ChangeFeed(
        app.state.session_factory,
        poll_seconds=settings.events_poll_seconds,
        overlap_seconds=settings.events_overlap_seconds,
        batch=settings.events_poll_batch,
    )


def _install_routes(app: FastAPI, settings: ApiSettings) -> None:
    """Error handlers, middleware, routers, the dashboard's static files and the schema."""
    install_error_handlers(app)
    # The last added is the outermost: requests refused for their size or text are counted.
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetricsMiddleware)
    app.include_router(experiments.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(dashboard.router)
    app.mount(dashboard.STATIC_PATH, dashboard.static_files(), name="dashboard-static")
    _document_auth_as_configured(app, settings.auth_required)
    if settings.auth_required:
        _serve_schema_behind_auth(app)


def _serve_schema_behind_auth(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(get_viewer)])
    async def openapi() -> JSONResponse:
        """The OpenAPI schema, for a bearer of a valid token."""
        return JSONResponse(app.openapi())


def create_service_app() -> FastAPI:
    """The app as an API process serves it (``gradlab api``, one call per uvicorn worker
    process): logs configured from the settings first (JSON lines or text)."""
    settings = get_api_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
