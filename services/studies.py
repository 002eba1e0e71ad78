"""Studies: submit (expanded into experiments, existing cells reused), resubmit failed runs,
cancel, read. Every limit is met before anything is written; the run ids to dispatch are
returned to the edge, which sends them after its commit.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from gradlab.science.study import StudyCell, StudySpec, expand
from gradlab.services import limits
from gradlab.services.errors import InvalidFieldsError, NotFoundError
from gradlab.settings import ApiSettings
from gradlab.store import studies as store
from gradlab.store.models import Study
from gradlab.store.studies import SubmittedStudy
from gradlab.store.users import Viewer


def expand_within_limits(study: StudySpec, scale: str, settings: ApiSettings) -> list[StudyCell]:
    """The study's cells at ``scale``: 422 when the request is past its caps (counted before
    expanding), a cell is not a valid spec, or a cell's cost passes a limit."""
    limits.check_study_request(study, settings)
    try:
        cells = expand(study, scale=scale)
    except ValueError as exc:
        raise InvalidFieldsError([("study", str(exc))]) from None
    limits.check_cells_cost(cells, settings)
    return cells


def submit_study(
    session: Session,
    study: StudySpec,
    *,
    viewer: Viewer,
    settings: ApiSettings,
    scale: str | None = None,
) -> SubmittedStudy:
    """Expand ``study`` (at ``scale``, default its own) into experiments, one per cell, and
    queue its runs; a cell matching one of ``viewer``'s experiments reuses it (missing seeds
    get new runs), and submitting the same study again returns it and requeues its failed
    runs. ``newly_queued_run_ids`` is what the edge dispatches after its commit.

    Refused before anything is written: 422 past the request caps, for an invalid cell, a
    cell past the cost limits, or a reused experiment pushed past 64 seeds; 429 past the
    owner's run limit. Expanding is CPU work: never call this on an event loop."""
    scale = study.scale if scale is None else scale
    cells = expand_within_limits(study, scale, settings)
    limits.start_submission(session, viewer.user_id)
    plan = store.plan_study(session, study, scale, cells, viewer.user_id)
    limits.check_reused_seeds(plan)
    limits.check_active_runs(session, viewer.user_id, viewer.name, plan.runs_to_queue(),
                             settings)
    return store.apply_study_plan(session, plan)


def get_study(session: Session, study_id: str, *, viewer: Viewer) -> Study:
    """The study with its cells (and their experiments) loaded; 404 when absent or not
    ``viewer``'s."""
    study = store.get_study(session, study_id, viewer)
    if study is None:
        raise NotFoundError(f"study {study_id} not found")
    return study


def resubmit_study(
    session: Session, study_id: str, *, viewer: Viewer, settings: ApiSettings
) -> list[str]:
    """Send the study's failed runs back to the queue (fresh attempts, resuming from their
    last checkpoint); returns only those, for the edge to dispatch after its commit: runs
    already queued were sent before and are never sent again. 429 when they would take the
    study's owner past the run limit."""
    # The lock first (on SQLite it is the database's write lock, which a transaction that
    # has read already may not be granted), then the owner's too when an admin resubmits.
    limits.start_submission(session, viewer.user_id)
    study = get_study(session, study_id, viewer=viewer)
    if study.owner_id != viewer.user_id:
        limits.start_submission(session, study.owner_id)
    failed = store.failed_runs(session, study)
    owner_name = viewer.name if study.owner_id == viewer.user_id else "owning this study"
    limits.check_active_runs(session, study.owner_id, owner_name, len(failed), settings)
    return store.requeue_runs(session, failed)


def cancel_study(session: Session, study_id: str, *, viewer: Viewer) -> Study:
    """Stop every cell: queued runs are cancelled now, running ones after their epoch."""
    store.cancel_study(session, get_study(session, study_id, viewer=viewer))
    return get_study(session, study_id, viewer=viewer)
