"""Who is asking: the bearer token of a request, when ``GRADLAB_AUTH_REQUIRED`` is true.

Every data route depends on :data:`ViewerDep` (the routers declare it, so a new route cannot
forget it), and so does ``/openapi.json``; only ``/healthz``, ``/readyz``, ``/metrics`` and the
dashboard's page and script (no data) are public (``/docs`` and ``/redoc`` are off). With auth
off (the embedded single-user default) every request is the one viewer that sees everything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gradlab.api.errors import UnauthorizedError
from gradlab.store.users import EVERYONE, Viewer, viewer_for_token

HOW_TO_GET_A_TOKEN = (
    "send `Authorization: Bearer <token>`; an administrator of this server creates one with "
    "`gradlab token create --user NAME`"
)

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `gradlab token create --user NAME` (needed when the server "
    "runs with GRADLAB_AUTH_REQUIRED=true).",
)


def get_viewer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Viewer:
    """The user behind the request's token (a thread: it reads the database)."""
    if not request.app.state.settings.auth_required:
        return EVERYONE
    if credentials is None:
        raise UnauthorizedError(f"this route needs a bearer token: {HOW_TO_GET_A_TOKEN}")
    with request.app.state.session_factory() as session:
        viewer = viewer_for_token(session, credentials.credentials)
    if viewer is None:
        raise UnauthorizedError(f"the token is unknown or revoked: {HOW_TO_GET_A_TOKEN}")
    return viewer


ViewerDep = Annotated[Viewer, Depends(get_viewer)]
