"""The rules a submission meets before anything is queued: the cost of each experiment (its
spec's estimated parameters, activation memory and checkpoint size) and the submitting user's
limit on queued + running runs."""

from __future__ import annotations

from sqlalchemy.orm import Session

from gradlab.api.errors import InvalidFieldsError, TooManyRunsError
from gradlab.science.cost import CostLimits, cost_excesses
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import Settings
from gradlab.store.users import Viewer, active_runs, lock_submissions


def cost_limits(settings: Settings) -> CostLimits:
    return CostLimits(
        max_parameters=settings.max_parameters,
        max_activation_bytes=settings.max_activation_bytes,
        max_checkpoint_bytes=settings.max_checkpoint_bytes,
    )


def cost_problems(
    spec: ExperimentSpec, settings: Settings, where: str = ""
) -> list[tuple[str, str]]:
    """(field, reason) for every cost limit ``spec`` exceeds; ``where`` names a study cell."""
    return [(f"{where}{e.field}", e.reason) for e in cost_excesses(spec, cost_limits(settings))]


def check_cost(specs: list[tuple[str, ExperimentSpec]], settings: Settings) -> None:
    """422 naming every limit each (place, spec) exceeds."""
    problems = [p for where, spec in specs for p in cost_problems(spec, settings, where)]
    if problems:
        raise InvalidFieldsError(problems)


def start_submission(session: Session, viewer: Viewer) -> None:
    """Call before adding runs: one owner's submissions then pass the run limit one by one."""
    lock_submissions(session, viewer.user_id)


def check_active_runs(session: Session, viewer: Viewer, settings: Settings, added: int) -> None:
    """429 when the runs just added (flushed) took the owner past the limit; the caller's
    transaction then rolls back, so nothing of the request is kept."""
    if added == 0:
        return
    limit = settings.max_active_runs_per_user
    active = active_runs(session, viewer.user_id)
    if active > limit:
        who = f"user {viewer.name}" if viewer.name else "this server's single user"
        raise TooManyRunsError(
            f"{who} would have {active} queued or running runs ({added} from this request); "
            f"the limit is {limit} per user (GRADLAB_MAX_ACTIVE_RUNS_PER_USER): wait for runs "
            "to finish or cancel some"
        )
