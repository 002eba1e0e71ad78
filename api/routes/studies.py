"""``/studies``: submit a study (expanded into experiments, existing cells reused), read its
cell x seed completion matrix, and its report as JSON or one self-contained HTML page."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from gradlab.api.auth import ViewerDep, get_viewer
from gradlab.api.deps import (
    SessionDep,
    SettingsDep,
    TransactionDep,
)
from gradlab.api.errors import error_responses, submission_route
from gradlab.api.response_cache import CachedResponse
from gradlab.api.view_cache import ViewsDep
from gradlab.science.json_values import json_safe
from gradlab.science.records import TERMINAL_RUN_STATUSES
from gradlab.science.study import StudySpec
from gradlab.services import studies as service
from gradlab.store import studies as store
from gradlab.store.models import Study

# Every route here needs the viewer (a token when auth is required).
router = APIRouter(
    prefix="/studies",
    tags=["studies"],
    dependencies=[Depends(get_viewer)],
    responses=error_responses(401),
)


class StudyCreated(BaseModel):
    id: str
    name: str
    scale: str
    created: bool = Field(description="false when this exact study was submitted before")
    cells: int
    runs_queued: int = Field(description="runs sent to the workers by this request")
    reused_experiment_ids: list[str] = Field(
        description="existing experiments (same spec) that became cells instead of new ones"
    )


class SeedCompletion(BaseModel):
    seed: int
    run_id: str | None
    status: str = Field(description="run status, or 'missing' when no run exists")
    epochs_done: int
    epochs_planned: int | None


class CellCompletion(BaseModel):
    position: int
    name: str
    experiment_id: str
    coordinates: dict[str, Any]
    seeds: list[SeedCompletion]


class StudyRead(BaseModel):
    id: str
    name: str
    scale: str
    spec: dict[str, Any]
    runs_planned: int
    runs_finished: int
    cells: list[CellCompletion]


class StudyListItem(BaseModel):
    id: str
    name: str
    scale: str
    cells: int
    created_at: datetime
    experiment_ids: list[str]


class StudyRequeued(BaseModel):
    id: str
    runs_queued: int = Field(description="queued runs sent to the workers by this request")


@router.post("", response_model=StudyCreated, **submission_route())
def create(
    study: StudySpec, tx: TransactionDep, viewer: ViewerDep, settings: SettingsDep
) -> StudyCreated:
    """Expand the study into experiments (one per cell, one run per seed) and queue its runs.

    A cell whose spec matches an existing experiment of yours reuses it (missing seeds get new
    runs, up to 64 seeds per experiment); submitting the same study again returns it and sends
    nothing already queued. Before anything is written: the number of cells and runs is capped
    (422, counted before expansion, a grid over seeds as the runs it makes), each cell's cost is
    checked (422), and so is your limit on queued and running runs (429). Expansion runs in a
    worker thread, never on the event loop.
    """
    submitted = service.submit_study(tx.session, study, viewer=viewer, settings=settings)
    tx.dispatch_after_commit(submitted.newly_queued_run_ids)
    return StudyCreated(
        id=submitted.study.id,
        name=submitted.study.name,
        scale=str(submitted.study.spec["scale"]),
        created=submitted.created,
        cells=len(submitted.study.cells),
        runs_queued=len(submitted.newly_queued_run_ids),
        reused_experiment_ids=submitted.reused_experiment_ids,
    )


@router.get("", name="list", response_model=list[StudyListItem], responses=error_responses(422))
def list_(
    session: SessionDep, viewer: ViewerDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[StudyListItem]:
    """Studies, newest first, with their cells' experiment ids."""
    return [
        StudyListItem(
            id=study.id,
            name=study.name,
            scale=str(study.spec["scale"]),
            cells=len(study.cells),
            created_at=study.created_at,
            experiment_ids=[c.experiment_id for c in study.cells],
        )
        for study in store.list_studies(session, limit, viewer)
    ]


@router.post(
    "/{study_id}/resubmit",
    response_model=StudyRequeued,
    responses=error_responses(404, 422, 429),
)
def resubmit(
    study_id: str, tx: TransactionDep, viewer: ViewerDep, settings: SettingsDep
) -> StudyRequeued:
    """Send the study's failed runs back to the queue (fresh attempts, resuming from their last
    checkpoint), as submitting the study again does; diverged and cancelled runs stay. Only
    those runs are sent (a run already queued was sent before); 429 when they would take the
    owner past the limit on queued and running runs."""
    queued = service.resubmit_study(tx.session, study_id, viewer=viewer, settings=settings)
    tx.dispatch_after_commit(queued)
    return StudyRequeued(id=study_id, runs_queued=len(queued))


@router.post(
    "/{study_id}/cancel", response_model=StudyRead, responses=error_responses(404, 422)
)
def cancel(study_id: str, session: SessionDep, viewer: ViewerDep) -> StudyRead:
    """Stop every cell: queued runs are cancelled now, running ones after their epoch."""
    return _study_read(session, service.cancel_study(session, study_id, viewer=viewer))


@router.get("/{study_id}", response_model=StudyRead, responses=error_responses(404, 422))
def read(study_id: str, session: SessionDep, viewer: ViewerDep) -> StudyRead:
    """The study's spec and its cell x seed completion matrix (status, epochs done)."""
    return _study_read(session, service.get_study(session, study_id, viewer=viewer))


def _study_read(session: Session, study: Study) -> StudyRead:
    cells = store.completion(session, study)
    seeds = [s for c in cells for s in c["seeds"]]
    return StudyRead(
        id=study.id,
        name=study.name,
        scale=str(study.spec["scale"]),
        spec=study.spec["study"],
        runs_planned=len(seeds),
        runs_finished=sum(1 for s in seeds if s["status"] in TERMINAL_RUN_STATUSES),
        cells=[CellCompletion.model_validate(c) for c in cells],
    )


@router.get(
    "/{study_id}/report",
    responses={**error_responses(404, 422), 200: {"content": {"text/html": {}}}},
)
async def report(
    study_id: str,
    views: ViewsDep,
    format: Literal["json", "html"] = "json",
) -> Response:
    """The study's report so far: table, findings, completion (JSON), or the whole HTML page
    with its figures embedded. Works while runs are still going (numbers say how many seeds)."""

    def entry(render: bool) -> CachedResponse | None:
        with views.factory() as session:
            study = service.get_study(session, study_id, viewer=views.viewer)
            # The report changes only when one of its runs moves (the runs' version), and
            # rendering a large study's HTML takes seconds: cached under that version.
            key = ("study-report", study.id, format, store.runs_version(session, study))
            found = views.cache.get(key)
            if found is None and render:
                found = _render_report(session, study, format)
                views.cache.put(key, found)
            return found

    found = await views.cached(entry)
    return Response(found.body, media_type=found.media_type)


def _render_report(session: Session, study: Study, format: str) -> CachedResponse:
    from gradlab.science.report import build_report, render_html  # matplotlib: on demand

    spec, scale = store.study_spec_of(study)
    results = store.study_results(session, study)
    built = build_report(
        spec.name,
        results,
        scale=scale,
        description=spec.description,
        with_figures=format == "html",
    )
    if format == "html":
        page = render_html(built)
        for fig in built.figures:
            fig.figure.clear()
        return CachedResponse(page.encode(), "text/html; charset=utf-8")
    body = JSONResponse({"id": study.id, **json_safe(built.to_json_dict())}).body
    return CachedResponse(bytes(body), "application/json")
