"""Every limit a submission meets, each written once and met before anything is written:

- the cost of each experiment (estimated parameters, activation memory, checkpoint size);
- the size of a study request (cells, and runs counted as the grid would make them);
- the seeds of one experiment (a study reusing it may not push it past ``MAX_SEEDS``);
- the owner's queued + running runs (``GRADLAB_MAX_ACTIVE_RUNS_PER_USER``), counted under the
  owner's submission lock, so two submissions at once cannot both pass it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from gradlab.science.cost import CostLimits, cost_excesses
from gradlab.science.spec import MAX_SEEDS, ExperimentSpec
from gradlab.science.study import StudyCell, StudySpec, StudyTooLargeError, check_study_size
from gradlab.services.errors import InvalidFieldsError, TooManyRunsError
from gradlab.settings import ApiSettings
from gradlab.store.studies import StudyPlan
from gradlab.store.users import active_runs, lock_submissions


def cost_limits(settings: ApiSettings) -> CostLimits:
    return CostLimits(
        max_parameters=settings.max_parameters,
        max_activation_bytes=settings.max_activation_bytes,
        max_checkpoint_bytes=settings.max_checkpoint_bytes,
    )


def check_cost(specs: Sequence[tuple[str, ExperimentSpec]], settings: ApiSettings) -> None:
    """422 naming every limit each (place, spec) exceeds; ``place`` names a study cell."""
    limits = cost_limits(settings)
    problems = [
        (f"{where}{field}", reason)
        for where, spec in specs
        for field, reason in cost_excesses(spec, limits)
    ]
    if problems:
        raise InvalidFieldsError(problems)


def check_cells_cost(cells: Sequence[StudyCell], settings: ApiSettings) -> None:
    check_cost([(_place(c), c.spec) for c in cells], settings)


def check_study_request(study: StudySpec, settings: ApiSettings) -> None:
    """422 for a study past the per-request caps, counted without expanding it."""
    try:
        check_study_size(
            study, max_cells=settings.max_study_cells, max_runs=settings.max_study_runs
        )
    except StudyTooLargeError as exc:
        raise InvalidFieldsError([("grid", str(exc))]) from None


def check_reused_seeds(plan: StudyPlan) -> None:
    """422 when a reused experiment would end with more than ``MAX_SEEDS`` seeds (its stored
    spec would no longer be valid, and nothing could read it back)."""
    problems = []
    for cell in plan.cells:
        if cell.experiment is None or not cell.new_seeds:
            continue
        after = len(cell.seeds_after())
        if after > MAX_SEEDS:
            problems.append((
                f"{_place(cell.cell)}seeds",
                f"this cell reuses experiment {cell.experiment.id} "
                f"({len(cell.experiment.runs)} seeds); adding {len(cell.new_seeds)} would make "
                f"{after}, past the limit of {MAX_SEEDS} seeds per experiment",
            ))
    if problems:
        raise InvalidFieldsError(problems)


def start_submission(session: Session, owner_id: str | None) -> None:
    """Take the owner's submission lock: call first in the transaction, before any count."""
    lock_submissions(session, owner_id)


def check_active_runs(
    session: Session, owner_id: str | None, owner_name: str | None, adding: int,
    settings: ApiSettings,
) -> None:
    """429 when ``adding`` more queued runs would take the owner past the limit (checked
    before they are written; call ``start_submission`` first)."""
    if adding == 0:
        return
    limit = settings.max_active_runs_per_user
    active = active_runs(session, owner_id)
    if active + adding > limit:
        who = f"user {owner_name}" if owner_name else "this server's single user"
        raise TooManyRunsError(
            f"{who} would have {active + adding} queued or running runs ({adding} from this "
            f"request); the limit is {limit} per user (GRADLAB_MAX_ACTIVE_RUNS_PER_USER): wait "
            "for runs to finish or cancel some"
        )


def _place(cell: StudyCell) -> str:
    return f"cells[{cell.position}] ({cell.name})."
