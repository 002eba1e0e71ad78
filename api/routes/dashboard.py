"""``GET /``: the web dashboard, one page that reads the API's own routes with the same tokens.

The page's script is built from ``dashboard/`` (npm, at build time: ``make dashboard``) and
committed, so serving it needs no Node and no internet.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(tags=["dashboard"], include_in_schema=False)

_PACKAGE = files("gradlab.api.dashboard")
STATIC_PATH = "/dashboard/static"


def static_files() -> StaticFiles:
    # follow_symlink: the editable install links each file from its own tree into the repository
    return StaticFiles(directory=str(_PACKAGE / "static"), follow_symlink=True)


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """The dashboard page (studies, experiments, submit form; routes after the #)."""
    page = (_PACKAGE / "index.html").read_text(encoding="utf-8")
    # no-cache: a new release's page must fetch its new script, not a stale one
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
