"""``/experiments``: submit, list, read, cancel, and read metrics and gradient flow."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.auth import ViewerDep, get_viewer
from gradlab.api.deps import (
    CheckpointStoreDep,
    ResponseCacheDep,
    RunsToDispatchDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
)
from gradlab.api.diagnostics_view import render_diagnostics
from gradlab.api.errors import (
    ConflictError,
    InvalidParameterError,
    NotFoundError,
    error_responses,
)
from gradlab.api.gradflow_views import GradflowFormat, GradflowQuery, render_gradflow
from gradlab.api.metrics_views import metrics_cache_key, render_metrics, summarize_experiment
from gradlab.api.response_cache import CachedResponse, RenderedView, ResponseCache
from gradlab.api.schemas import (
    DiagnosticsRead,
    ExperimentCreated,
    ExperimentListItem,
    ExperimentListRow,
    ExperimentPageRead,
    ExperimentRead,
    GradflowRead,
    GradflowStat,
    GradflowWindow,
    MetricsRead,
    ProgressRead,
    RunBrief,
    RunRead,
)
from gradlab.api.submission import check_active_runs, check_cost, start_submission
from gradlab.science.bounds import INT32_MAX
from gradlab.science.records import RunStatus
from gradlab.science.spec import ExperimentSpec
from gradlab.store import experiments as store
from gradlab.store.models import Experiment, Run
from gradlab.store.session import session_scope
from gradlab.store.users import Viewer

log = logging.getLogger(__name__)

# Every route here needs the viewer (a token when auth is required).
router = APIRouter(
    prefix="/experiments",
    tags=["experiments"],
    dependencies=[Depends(get_viewer)],
    responses=error_responses(401),
)
# Integers in queries stay inside the database's INTEGER columns they are compared with.
EpochQuery = Annotated[int | None, Query(ge=0, le=INT32_MAX)]


def _get_or_404(session: Session, experiment_id: str, viewer: Viewer) -> Experiment:
    experiment = store.get_experiment(session, experiment_id, viewer)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return experiment


def _run_read(run: Run) -> RunRead:
    test = None
    if run.test_acc is not None or run.test_loss is not None:
        test = {"loss": run.test_loss, "acc": run.test_acc, "best_epoch": run.best_epoch}
    return RunRead.model_validate(
        {
            **{k: getattr(run, k) for k in RunRead.model_fields if k != "test"},
            "test": test,
        }
    )


def _experiment_read(session: Session, experiment: Experiment) -> ExperimentRead:
    return ExperimentRead(
        **ExperimentListItem.model_validate(experiment).model_dump(),
        spec=experiment.spec,
        runs=[_run_read(r) for r in experiment.runs],
        summary=summarize_experiment(session, experiment),  # type: ignore[arg-type]
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentCreated,
    responses=error_responses(400, 413, 422, 429),
)
def create(
    spec: ExperimentSpec,
    session: SessionDep,
    pending: RunsToDispatchDep,
    viewer: ViewerDep,
    settings: SettingsDep,
) -> ExperimentCreated:
    """Store an experiment and one queued run per seed; the runs are dispatched after commit.

    Refused (422) when its estimated cost passes a limit, and (429) when the user's queued and
    running runs would pass theirs."""
    check_cost([("", spec)], settings)
    start_submission(session, viewer)
    experiment = store.create_experiment(session, spec, viewer.user_id)
    check_active_runs(session, viewer, settings, len(experiment.runs))
    pending.add([run.id for run in experiment.runs])
    # Built before the commit (in the dependency) so no attribute is reloaded after it.
    return ExperimentCreated(
        id=experiment.id,
        status=experiment.status,
        runs=[RunBrief(id=r.id, seed=r.seed, status=r.status) for r in experiment.runs],  # type: ignore[arg-type]
    )


@router.get("", name="list", response_model=ExperimentPageRead, responses=error_responses(422))
def list_(
    session: SessionDep,
    viewer: ViewerDep,
    status: RunStatus | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=store.MAX_CURSOR_LENGTH)] = None,
) -> ExperimentPageRead:
    """Your experiments (everyone's for an admin), newest first; pass ``next_cursor`` back as
    ``cursor`` for the next page."""
    try:
        page = store.list_experiments(
            session, status=status, name=name, limit=limit, cursor=cursor, viewer=viewer
        )
    except store.InvalidCursorError as exc:
        raise InvalidParameterError("cursor", str(exc)) from exc
    progress = store.run_progress(session, [e.id for e in page.items])
    return ExperimentPageRead(
        items=[_list_row(e, progress.get(e.id)) for e in page.items],
        next_cursor=page.next_cursor,
    )


def _list_row(experiment: Experiment, progress: store.RunProgress | None) -> ExperimentListRow:
    row = ExperimentListRow.model_validate(experiment)
    if progress is not None:
        epochs = int((experiment.spec.get("hyperparameters") or {}).get("epochs") or 0)
        planned = epochs * progress.runs
        row.progress = ProgressRead(
            runs=progress.runs,
            runs_finished=progress.runs_finished,
            epochs_done=progress.epochs_done,
            epochs_planned=planned,
            current_train_loss=_finite_or_none(progress.current_train_loss),
            eta_seconds=_eta_seconds(progress, planned),
        )
    return row


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _eta_seconds(progress: store.RunProgress, epochs_planned: int) -> float | None:
    """Epochs left times the mean epoch time, shared by the runs training now: a rough figure
    (queued runs wait for a worker first) that a list can show without a request per run."""
    left = epochs_planned - progress.epochs_done
    if progress.runs_finished == progress.runs or left <= 0:
        return None
    seconds = _finite_or_none(progress.mean_epoch_seconds)
    if seconds is None:
        return None
    return round(left * seconds / max(1, progress.runs_running), 1)


@router.get(
    "/{experiment_id}", response_model=ExperimentRead, responses=error_responses(404, 422)
)
def read(experiment_id: str, session: SessionDep, viewer: ViewerDep) -> ExperimentRead:
    """Spec, status, runs (seed, status, epochs done, last error) and the final-metrics summary."""
    return _experiment_read(session, _get_or_404(session, experiment_id, viewer))


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses=error_responses(404, 413, 422),
)
def cancel(experiment_id: str, session: SessionDep, viewer: ViewerDep) -> ExperimentRead:
    """Stop an experiment: queued runs are cancelled now, running ones after their epoch."""
    experiment = store.request_cancel(session, experiment_id, viewer)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return _experiment_read(session, experiment)


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409, 422),
)
def delete(
    experiment_id: str,
    factory: SessionFactoryDep,
    checkpoints: CheckpointStoreDep,
    cache: ResponseCacheDep,
    viewer: ViewerDep,
) -> Response:
    """Delete a finished experiment: its runs, metrics, gradient flow and every checkpoint in
    the checkpoint store. 409 while a run is queued or running (cancel it first) or while a
    study holds it."""
    try:
        with session_scope(factory) as session:
            _get_or_404(session, experiment_id, viewer)  # another user's: not found
            run_ids = store.delete_experiment(session, experiment_id)
    except store.ExperimentInUseError as exc:
        raise ConflictError(str(exc)) from exc
    if run_ids is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    cache.discard_experiment(experiment_id)
    # After the commit: a failure here leaves unreferenced bytes, never a reference to none.
    for run_id in run_ids:
        try:
            checkpoints.delete_run(run_id)
        except Exception:
            log.exception("could not delete the checkpoints of run %s", run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _cached_view(
    cache: ResponseCache,
    key: tuple[Any, ...],
    factory: sessionmaker[Session],
    experiment_id: str,
    viewer: Viewer,
    render: Callable[[Session, Experiment], RenderedView],
) -> Response:
    """A rendered view from the cache, else rendered in a worker thread.

    A finished experiment's views never change: they are cached under ``key`` and a hit
    touches neither the database nor a thread. A running experiment's views change only when
    a run records an epoch, changes status or restarts (the worker writes an epoch's rows and
    the run's progress in one transaction), so they are cached under ``key`` plus that version:
    a dashboard polling between epochs costs one small read of the runs.

    The key starts with who may see it (the owner's id, or everyone's view): an entry is only
    put after the viewer was allowed to read the experiment, so a hit needs no ownership read.
    """
    key = (_visibility(viewer), *key)
    hit = cache.get(key)
    if hit is None:

        def build() -> CachedResponse:
            with factory() as session:
                experiment = _get_or_404(session, experiment_id, viewer)
                # read before the data, so the data is at least as new as the version
                version = tuple((r.id, r.status, r.epochs_done, r.attempt) for r in experiment.runs)
                versioned = (*key, version)
                entry = cache.get(versioned)
                if entry is None:
                    view = render(session, experiment)
                    entry = view.response
                    cache.put(key if view.final else versioned, entry)
                return entry

        hit = await run_in_threadpool(build)
    return _response(hit)


def _visibility(viewer: Viewer) -> str:
    return "*" if viewer.sees_all else f"owner:{viewer.user_id}"


def _response(entry: CachedResponse) -> Response:
    return Response(entry.body, media_type=entry.media_type, headers=dict(entry.headers))


@router.get(
    "/{experiment_id}/metrics",
    response_model=MetricsRead,
    responses=error_responses(404, 422),
)
async def metrics(
    experiment_id: str,
    factory: SessionFactoryDep,
    cache: ResponseCacheDep,
    viewer: ViewerDep,
    max_points: Annotated[
        int | None,
        Query(
            ge=2,
            le=INT32_MAX,
            description="at most this many epochs per series (first and last kept)",
        ),
    ] = None,
) -> Response:
    """Per run and epoch: losses, accuracies, lr and seconds; mean/std across seeds; test result."""
    return await _cached_view(
        cache,
        metrics_cache_key(experiment_id, max_points),
        factory,
        experiment_id,
        viewer,
        lambda session, experiment: render_metrics(session, experiment, max_points),
    )


@router.get(
    "/{experiment_id}/gradflow",
    response_model=GradflowRead,
    responses={
        **error_responses(404, 422),
        200: {
            "content": {
                "application/json": {},
                "text/csv": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "JSON (below), a tidy CSV table of the same numbers, or the figure",
        },
    },
)
async def gradflow(
    experiment_id: str,
    factory: SessionFactoryDep,
    cache: ResponseCacheDep,
    viewer: ViewerDep,
    stat: GradflowStat = "mean_abs",
    window: GradflowWindow = "last_batch",
    seed: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    epoch_from: EpochQuery = None,
    epoch_to: EpochQuery = None,
    format: GradflowFormat = "json",
    log_scale: Annotated[bool, Query(description="png only: logarithmic value axis")] = False,
) -> Response:
    """Per-layer gradient statistics per epoch, layers in depth order; available while running.

    ``values[i][j]`` is layer ``j`` at ``epochs[i]``; ``across_seeds`` averages the runs shown.
    """
    query = GradflowQuery(stat, window, seed, epoch_from, epoch_to, format, log_scale)
    return await _cached_view(
        cache,
        query.cache_key(experiment_id),
        factory,
        experiment_id,
        viewer,
        lambda session, experiment: render_gradflow(session, experiment, query),
    )


@router.get(
    "/{experiment_id}/diagnostics",
    response_model=DiagnosticsRead,
    responses=error_responses(404, 422),
)
async def diagnostics(
    experiment_id: str, factory: SessionFactoryDep, cache: ResponseCacheDep, viewer: ViewerDep
) -> Response:
    """What went wrong so far, in words: vanishing or exploding gradients, not training,
    overfitting (the study diagnostics on this experiment's seeds), with their evidence."""
    return await _cached_view(
        cache, ("diagnostics", experiment_id), factory, experiment_id, viewer, render_diagnostics
    )
