"""``/experiments``: submit, list, read, cancel, and read metrics and gradient flow."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import Response
from sqlalchemy.orm import Session

from gradlab.api.auth import ViewerDep, get_viewer
from gradlab.api.deps import (
    CheckpointStoreDep,
    ResponseCacheDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    TransactionDep,
)
from gradlab.api.diagnostics_view import render_diagnostics
from gradlab.api.errors import InvalidParameterError, error_responses, submission_route
from gradlab.api.gradflow_views import GradflowFormat, GradflowQuery
from gradlab.api.metrics_views import MetricsView, summarize_experiment
from gradlab.api.response_cache import CachedResponse
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
from gradlab.api.view_cache import ViewsDep
from gradlab.science.bounds import INT32_MAX
from gradlab.science.records import RunStatus
from gradlab.science.spec import ExperimentSpec
from gradlab.services import experiments as service
from gradlab.store import experiments as store
from gradlab.store.models import Experiment, Run
from gradlab.store.session import session_scope

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
        summary=summarize_experiment(session, experiment),
    )


@router.post("", response_model=ExperimentCreated, **submission_route())
def create(
    spec: ExperimentSpec, tx: TransactionDep, viewer: ViewerDep, settings: SettingsDep
) -> ExperimentCreated:
    """Store an experiment and one queued run per seed; the runs are dispatched after commit.

    Refused (422) when its estimated cost passes a limit, and (429) when the user's queued and
    running runs would pass theirs."""
    submitted = service.submit_experiment(tx.session, spec, viewer=viewer, settings=settings)
    tx.dispatch_after_commit(submitted.to_dispatch)
    experiment = submitted.experiment
    return ExperimentCreated(
        id=experiment.id,
        status=experiment.status,
        runs=[RunBrief(id=r.id, seed=r.seed, status=r.status) for r in experiment.runs],
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
    experiment = service.get_experiment(session, experiment_id, viewer=viewer)
    return _experiment_read(session, experiment)


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses=error_responses(404, 413, 422),
)
def cancel(experiment_id: str, session: SessionDep, viewer: ViewerDep) -> ExperimentRead:
    """Stop an experiment: queued runs are cancelled now, running ones after their epoch."""
    experiment = service.cancel_experiment(session, experiment_id, viewer=viewer)
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
    # Its own transaction, committed before the bytes go (the route's session commits later).
    with session_scope(factory) as session:
        run_ids = service.delete_experiment(session, experiment_id, viewer=viewer)
    cache.discard_experiment(experiment_id)
    # After the commit: a failure here leaves unreferenced bytes, never a reference to none.
    for run_id in run_ids:
        try:
            checkpoints.delete_run(run_id)
        except Exception:
            log.exception("could not delete the checkpoints of run %s", run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@dataclass(frozen=True)
class _DiagnosticsView:
    def cache_key(self, session: Session, experiment: Experiment) -> tuple[Any, ...]:
        return ("diagnostics",)

    def render(self, session: Session, experiment: Experiment) -> CachedResponse:
        return render_diagnostics(session, experiment)


@router.get(
    "/{experiment_id}/metrics",
    response_model=MetricsRead,
    responses=error_responses(404, 422),
)
async def metrics(
    experiment_id: str,
    views: ViewsDep,
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
    return await views.experiment(experiment_id, MetricsView(max_points))


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
    views: ViewsDep,
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
    return await views.experiment(experiment_id, query)


@router.get(
    "/{experiment_id}/diagnostics",
    response_model=DiagnosticsRead,
    responses=error_responses(404, 422),
)
async def diagnostics(experiment_id: str, views: ViewsDep) -> Response:
    """What went wrong so far, in words: vanishing or exploding gradients, not training,
    overfitting (the study diagnostics on this experiment's seeds), with their evidence."""
    return await views.experiment(experiment_id, _DiagnosticsView())
