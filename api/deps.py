"""Request dependencies: the session of a read, the transaction of a write (commit or roll
back at the edge, then dispatch what the service queued), settings and shared parts.

The transaction dependency has ``scope="function"``: its commit (and the dispatch after it)
runs when the route returns and before the response is sent, so a failed commit is answered
as an error, never as a 201 for lost data, and a worker is never told about a run it cannot
read yet (``gradlab.services.transaction``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.prometheus_metrics import DISPATCH_FAILURES
from gradlab.api.render_limits import RenderLimiter
from gradlab.api.response_cache import ResponseCache
from gradlab.services.transaction import Transaction, transaction
from gradlab.settings import ApiSettings
from gradlab.store.checkpoint_store import CheckpointStore
from gradlab.store.session import session_scope


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.session_factory) as session:
        yield session


def get_transaction(request: Request) -> Iterator[Transaction]:
    state = request.app.state
    with transaction(state.session_factory, state.dispatcher, DISPATCH_FAILURES.inc) as tx:
        yield tx


async def get_settings_dep(request: Request) -> ApiSettings:
    return cast("ApiSettings", request.app.state.settings)


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    return cast("sessionmaker[Session]", request.app.state.session_factory)


async def get_checkpoint_store(request: Request) -> CheckpointStore:
    return cast("CheckpointStore", request.app.state.checkpoint_store)


async def get_response_cache(request: Request) -> ResponseCache:
    return cast("ResponseCache", request.app.state.response_cache)


async def get_render_limiter(request: Request) -> RenderLimiter:
    return cast("RenderLimiter", request.app.state.render_limiter)


# The plain getters are ``async def`` so FastAPI calls them on the event loop, not in a thread.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
TransactionDep = Annotated[Transaction, Depends(get_transaction, scope="function")]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings_dep)]
CheckpointStoreDep = Annotated[CheckpointStore, Depends(get_checkpoint_store)]
ResponseCacheDep = Annotated[ResponseCache, Depends(get_response_cache)]
RenderLimiterDep = Annotated[RenderLimiter, Depends(get_render_limiter)]
