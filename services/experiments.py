"""Experiments: submit (cost, then the owner's run limit, before anything is written), read
with their runs loaded, cancel, delete. Keyword-only, on the caller's session, never commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from gradlab.science.spec import ExperimentSpec
from gradlab.services import limits
from gradlab.services.errors import ConflictError, NotFoundError
from gradlab.settings import ApiSettings
from gradlab.store import experiments as store
from gradlab.store.models import Experiment
from gradlab.store.users import Viewer


@dataclass(frozen=True)
class SubmittedExperiment:
    """The new experiment, its runs in memory (no load); ``to_dispatch``: the run ids the
    edge sends to the workers after its commit."""

    experiment: Experiment
    to_dispatch: list[str]


def submit_experiment(
    session: Session, spec: ExperimentSpec, *, viewer: Viewer, settings: ApiSettings
) -> SubmittedExperiment:
    """Store an experiment and one queued run per seed, owned by ``viewer``.

    Refused before anything is written: 422 when its estimated cost passes a limit, 429 when
    its runs would take the owner past their limit on queued + running runs."""
    limits.check_cost([("", spec)], settings)
    limits.start_submission(session, viewer.user_id)
    limits.check_active_runs(session, viewer.user_id, viewer.name, len(spec.seeds), settings)
    experiment = store.create_experiment(session, spec, viewer.user_id)
    return SubmittedExperiment(experiment, [r.id for r in experiment.runs])


def get_experiment(session: Session, experiment_id: str, *, viewer: Viewer) -> Experiment:
    """The experiment with its runs loaded; 404 when absent or not ``viewer``'s to see."""
    experiment = store.get_experiment(session, experiment_id, viewer)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return experiment


def cancel_experiment(session: Session, experiment_id: str, *, viewer: Viewer) -> Experiment:
    """Stop an experiment: queued runs are cancelled now, running ones after their epoch."""
    experiment = store.request_cancel(session, experiment_id, viewer)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return experiment


def delete_experiment(session: Session, experiment_id: str, *, viewer: Viewer) -> list[str]:
    """Delete a finished experiment and its rows; returns its run ids, whose checkpoint bytes
    the edge deletes after its commit. 409 while a run may still write or a study holds it."""
    get_experiment(session, experiment_id, viewer=viewer)  # another user's: not found
    try:
        run_ids = store.delete_experiment(session, experiment_id)
    except store.ExperimentInUseError as exc:
        raise ConflictError(str(exc)) from exc
    if run_ids is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return run_ids
