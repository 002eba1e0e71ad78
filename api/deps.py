"""Request dependencies: the session that commits or rolls back at the edge, and run dispatch.

Run ids a route wants trained are only handed to the dispatcher after the request's transaction
has committed, so a worker can never be told about a run it cannot read yet. The session
dependency has ``scope="function"``: its commit runs when the route returns and before the
response is sent, so a failed commit is answered as an error, never as a 201 for lost data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.prometheus_metrics import DISPATCH_FAILURES
from gradlab.api.response_cache import ResponseCache
from gradlab.dispatch.dispatchers import DispatchError, RunDispatcher
from gradlab.settings import Settings
from gradlab.store.checkpoint_store import CheckpointStore
from gradlab.store.session import session_scope

log = logging.getLogger(__name__)


class RunsToDispatch:
    """Run ids collected during one request, dispatched after its commit."""

    def __init__(self) -> None:
        self.run_ids: list[str] = []

    def add(self, run_ids: Sequence[str]) -> None:
        self.run_ids.extend(run_ids)


async def get_runs_to_dispatch(request: Request) -> RunsToDispatch:
    pending = RunsToDispatch()
    request.state.runs_to_dispatch = pending
    return pending


def _dispatch_after_commit(request: Request) -> None:
    pending: RunsToDispatch | None = getattr(request.state, "runs_to_dispatch", None)
    if pending is None or not pending.run_ids:
        return
    # The runs are committed as queued, and the database (not the broker) is the record: the
    # reaper (or the local worker's poll) picks up what was not sent. Answer the request.
    try:
        dispatcher: RunDispatcher = request.app.state.dispatcher
        dispatcher.dispatch(list(pending.run_ids))
    except DispatchError as exc:
        DISPATCH_FAILURES.inc(len(exc.unsent))
        log.warning("%s; they stay queued and the reaper will send them", exc)
    except Exception:
        DISPATCH_FAILURES.inc(len(pending.run_ids))
        log.exception("dispatching runs %s failed; they stay queued", pending.run_ids)


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.session_factory) as session:
        yield session
    _dispatch_after_commit(request)


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


async def get_checkpoint_store(request: Request) -> CheckpointStore:
    return request.app.state.checkpoint_store


async def get_response_cache(request: Request) -> ResponseCache:
    return request.app.state.response_cache


# The plain getters are ``async def`` so FastAPI calls them on the event loop, not in a thread.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
RunsToDispatchDep = Annotated[RunsToDispatch, Depends(get_runs_to_dispatch)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
CheckpointStoreDep = Annotated[CheckpointStore, Depends(get_checkpoint_store)]
ResponseCacheDep = Annotated[ResponseCache, Depends(get_response_cache)]
