"""Server-sent events: ``GET /experiments/{id}/events`` and ``GET /studies/{id}/events``.

An event per epoch and per status change of the runs concerned (see ``api/event_stream.py``
for the events, their ids and resuming with ``Last-Event-ID``). Ownership is checked before
``Last-Event-ID`` is read, and again every ``GRADLAB_EVENTS_AUTH_RECHECK_SECONDS`` while the
stream is open, with the token as it stands then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent

from gradlab.api.auth import ViewerDep, get_viewer
from gradlab.api.deps import SessionFactoryDep, SettingsDep
from gradlab.api.errors import NotFoundError, error_responses
from gradlab.api.event_stream import SEPARATOR, StreamSource, event_stream, parse_event_id
from gradlab.settings import ApiSettings
from gradlab.store.events import all_visible, study_experiment_ids
from gradlab.store.users import Viewer, viewer_for_token_id

# Every route needs a token when auth is on (the dependency runs before the stream starts).
router = APIRouter(tags=["events"], dependencies=[Depends(get_viewer)])

# One server-sent event, as OpenAPI 3.2's itemSchema would say (3.1 tools, schemathesis among
# them, read ``schema`` of text/event-stream as the per-event schema): its data is JSON text.
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["snapshot", "epoch", "status", "end", "message"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}
_SSE_RESPONSES = {
    **error_responses(401, 404, 422),
    200: {
        "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        "description": "snapshot | epoch | status | end events; ids resume with Last-Event-ID",
    },
}
LastEventIdHeader = Annotated[
    str | None, Header(alias="Last-Event-ID", description="resume after this event id")
]
LastEventIdQuery = Annotated[
    str | None,
    Query(
        alias="last_event_id",
        description="same as the Last-Event-ID header, for clients that cannot set headers",
    ),
]


# Who may follow what: the experiment ids behind an experiment's or a study's id (404 if none).
_IdsOf = Callable[[sessionmaker[Session], str, Viewer], list[str]]


def _experiment_ids(
    factory: sessionmaker[Session], experiment_id: str, viewer: Viewer
) -> list[str]:
    with factory() as session:
        if not all_visible(session, [experiment_id], viewer):
            raise NotFoundError(f"experiment {experiment_id} not found")
    return [experiment_id]


def _study_ids(factory: sessionmaker[Session], study_id: str, viewer: Viewer) -> list[str]:
    with factory() as session:
        ids = study_experiment_ids(session, study_id, viewer)
    if ids is None:
        raise NotFoundError(f"study {study_id} not found")
    return ids


def _still_allowed(
    factory: sessionmaker[Session], viewer: Viewer, experiment_ids: list[str]
) -> bool:
    """The token still stands (not revoked) and, as it stands now (an admin grant may have
    been taken away), still sees every experiment the stream follows."""
    with factory() as session:
        now = viewer
        if viewer.token_id is not None:
            found = viewer_for_token_id(session, viewer.token_id)
            if found is None:
                return False
            now = found
        return all_visible(session, experiment_ids, now)


def _response(
    request: Request,
    settings: ApiSettings,
    factory: sessionmaker[Session],
    experiment_ids: list[str],
    viewer: Viewer,
    kind: str,
    resume_from: datetime | None,
) -> EventSourceResponse:
    source = StreamSource(
        factory=factory,
        feed=request.app.state.change_feed,
        experiment_ids=experiment_ids,
        overlap=timedelta(seconds=settings.events_overlap_seconds),
        kind=kind,
        still_allowed=lambda: _still_allowed(factory, viewer, experiment_ids),
        recheck_seconds=settings.events_auth_recheck_seconds,
    )
    return EventSourceResponse(
        event_stream(source, resume_from),
        # no caching, and no buffering by a reverse proxy (nginx reads X-Accel-Buffering)
        headers={"Cache-Control": "no-cache"},
        ping=settings.events_heartbeat_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="heartbeat", sep=SEPARATOR),
        sep=SEPARATOR,
    )


@dataclass(frozen=True)
class _Follow:
    """What both event routes take: the request, settings, sessions, the viewer and where to
    resume (the Last-Event-ID header, else the query parameter), read only after ownership."""

    request: Request
    settings: ApiSettings
    factory: sessionmaker[Session]
    viewer: Viewer
    last_event_id: str | None

    async def stream(self, ids_of: _IdsOf, ident: str, kind: str) -> EventSourceResponse:
        ids = await run_in_threadpool(ids_of, self.factory, ident, self.viewer)
        resume_from = None if not self.last_event_id else parse_event_id(self.last_event_id)
        return _response(self.request, self.settings, self.factory, ids, self.viewer, kind,
                         resume_from)


async def _follow(
    request: Request,
    settings: SettingsDep,
    factory: SessionFactoryDep,
    viewer: ViewerDep,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> _Follow:
    return _Follow(request, settings, factory, viewer, last_event_id or last_event_id_query)


FollowDep = Annotated[_Follow, Depends(_follow)]


@router.get("/experiments/{experiment_id}/events", responses=_SSE_RESPONSES)
async def experiment_events(experiment_id: str, follow: FollowDep) -> EventSourceResponse:
    """Follow an experiment: a snapshot, then an event per epoch and per status change."""
    return await follow.stream(_experiment_ids, experiment_id, "experiment")


@router.get("/studies/{study_id}/events", responses=_SSE_RESPONSES)
async def study_events(study_id: str, follow: FollowDep) -> EventSourceResponse:
    """Follow every run of a study's cells (events name their experiment)."""
    return await follow.stream(_study_ids, study_id, "study")
