"""Studies in the store: expand a study into experiments (reusing existing ones) and read back
what their runs produced as :class:`~gradlab.science.study_results.CellResult` s.

Like every repository here: takes a ``Session``, flushes, never commits.

Reuse: a cell whose spec has the same ``spec_hash`` as an existing experiment (the canonical
spec without seeds, :func:`gradlab.store.experiments.spec_hash`) is that experiment; seeds the
cell asks for that it lacks get new queued runs. Submitting the same study (same name, spec and
scale) again returns the existing study, so a re-run resumes instead of duplicating.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from gradlab.science.records import GradFlowEpoch, TestResult
from gradlab.science.spec import ExperimentSpec
from gradlab.science.study import StudyCell as ExpandedCell
from gradlab.science.study import StudySpec, expand
from gradlab.science.study_results import CellResult, SeedRun
from gradlab.store.base import new_id, utcnow
from gradlab.store.experiments import (
    create_experiment,
    new_queued_run,
    read_metrics,
    refresh_experiment_status,
    request_cancel,
    spec_hash,
)
from gradlab.store.gradflow import read_gradflow_epochs
from gradlab.store.models import Experiment, Run, Study, StudyCell
from gradlab.store.users import EVERYONE, Viewer, owned_by, visible_to


@dataclass
class SubmittedStudy:
    """The study row (cells loaded); which of its runs wait for a worker (``queued_run_ids``,
    queued now or before) and which this submission put in the queue (``newly_queued_run_ids``:
    new runs and requeued failed ones; only these need sending, the others were sent already)."""

    study: Study
    created: bool
    queued_run_ids: list[str] = field(default_factory=list)
    reused_experiment_ids: list[str] = field(default_factory=list)
    newly_queued_run_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CellPlan:
    """What submitting a new study does for one cell: reuse ``experiment`` (its runs loaded)
    or, when None, create one; either way ``new_seeds`` get new queued runs."""

    cell: ExpandedCell
    experiment: Experiment | None
    new_seeds: tuple[int, ...]

    def seeds_after(self) -> set[int]:
        """Every seed the cell's experiment has once the plan is applied."""
        have = {run.seed for run in self.experiment.runs} if self.experiment else set()
        return have | set(self.new_seeds)


@dataclass
class StudyPlan:
    """What a submission would write, read before anything is written, so every limit can be
    met first: the cells to create or reuse (none when this study exists already: ``existing``)
    and the failed runs it would send back to the queue."""

    spec: StudySpec
    scale: str
    owner_id: str | None
    existing: Study | None
    cells: list[CellPlan] = field(default_factory=list)
    failed_runs: list[Run] = field(default_factory=list)

    def runs_to_queue(self) -> int:
        """How many runs applying the plan puts in the queue (new and requeued)."""
        return sum(len(c.new_seeds) for c in self.cells) + len(self.failed_runs)


def _stored_spec(study: StudySpec, scale: str) -> dict[str, Any]:
    return {"study": study.model_dump(mode="json"), "scale": scale}


def find_study(
    session: Session, study: StudySpec, scale: str, owner_id: str | None = None
) -> Study | None:
    """This owner's earlier submission of exactly this study at this scale, if any (cells
    loaded)."""
    wanted = _stored_spec(study, scale)
    query = (
        select(Study)
        .options(selectinload(Study.cells).selectinload(StudyCell.experiment))
        .where(Study.name == study.name, owned_by(Study.owner_id, owner_id))
    )
    for row in session.scalars(query):
        if row.spec == wanted:
            return row
    return None


def _find_experiment(
    session: Session, spec: ExperimentSpec, owner_id: str | None
) -> Experiment | None:
    # Only the same owner's experiments are reused: a cell never shares another user's runs.
    query = (
        select(Experiment)
        .options(selectinload(Experiment.runs))
        .where(Experiment.spec_hash == spec_hash(spec), owned_by(Experiment.owner_id, owner_id))
        .order_by(Experiment.created_at, Experiment.id)
        .limit(1)
    )
    return session.scalars(query).first()


def plan_study(
    session: Session,
    study: StudySpec,
    scale: str,
    cells: Sequence[ExpandedCell],
    owner_id: str | None = None,
) -> StudyPlan:
    """What submitting ``study`` (expanded into ``cells`` at ``scale``) would write; reads only."""
    existing = find_study(session, study, scale, owner_id)
    plan = StudyPlan(study, scale, owner_id, existing)
    if existing is not None:
        plan.failed_runs = _failed(cell_runs(session, existing).values())
        return plan
    for cell in cells:
        experiment = _find_experiment(session, cell.spec, owner_id)
        have = {run.seed for run in experiment.runs} if experiment else set()
        new_seeds = tuple(sorted(set(cell.spec.seeds) - have))
        plan.cells.append(CellPlan(cell, experiment, new_seeds))
        if experiment is not None:
            wanted = set(cell.spec.seeds)
            plan.failed_runs += _failed([[r for r in experiment.runs if r.seed in wanted]])
    return plan


def _add_missing_seeds(session: Session, plan: CellPlan) -> list[str]:
    experiment = plan.experiment
    assert experiment is not None
    if not plan.new_seeds:
        return []
    now = utcnow()
    added = [new_queued_run(seed, now) for seed in plan.new_seeds]
    experiment.runs.extend(added)
    # The stored spec lists every seed the experiment has runs for.
    experiment.spec = {**experiment.spec, "seeds": sorted(plan.seeds_after())}
    experiment.updated_at = now
    session.flush()
    refresh_experiment_status(session, experiment.id)
    return [run.id for run in added]


def apply_study_plan(session: Session, plan: StudyPlan) -> SubmittedStudy:
    """Write what ``plan`` says (flushed, not committed): the study and its cells when new,
    new runs of missing seeds, failed runs back to the queue."""
    reused: list[str] = []
    new_runs: list[str] = []
    study = plan.existing
    if study is None:
        study = Study(id=new_id(), name=plan.spec.name, spec=_stored_spec(plan.spec, plan.scale),
                      owner_id=plan.owner_id)
        session.add(study)
        session.flush()
        for cell_plan in plan.cells:
            if cell_plan.experiment is None:
                experiment = create_experiment(session, cell_plan.cell.spec, plan.owner_id)
                new_runs += [run.id for run in experiment.runs]
            else:
                experiment = cell_plan.experiment
                reused.append(experiment.id)
                new_runs += _add_missing_seeds(session, cell_plan)
            session.add(StudyCell(
                study_id=study.id,
                position=cell_plan.cell.position,
                experiment_id=experiment.id,
                coordinates=_json_coordinates(cell_plan.cell.coordinates),
            ))
        session.flush()
    requeued = requeue_runs(session, plan.failed_runs)
    loaded = get_study(session, study.id)
    assert loaded is not None
    return SubmittedStudy(loaded, plan.existing is None, queued_runs(session, loaded), reused,
                          [*new_runs, *requeued])


def submit_study(
    session: Session, study: StudySpec, scale: str | None = None, owner_id: str | None = None
) -> SubmittedStudy:
    """Expand ``study`` into experiments and runs (reusing what exists), with no limit: the
    service layer (``gradlab.services.studies``) plans, checks the limits, then applies.

    Expanding is the expensive part: never call this on an event loop.
    """
    scale = study.scale if scale is None else scale
    return apply_study_plan(session, plan_study(session, study, scale, expand(study, scale=scale),
                                                owner_id))


def _failed(run_groups: Iterable[Sequence[Run]]) -> list[Run]:
    """Resubmitting a study completes it: its failed runs go back to the queue (a code failure
    after a fix, or an infrastructure failure past the attempt cap). Diverged runs stay:
    divergence is deterministic. Cancelled runs stay: that was someone's decision."""
    return [run for runs in run_groups for run in runs if run.status == "failed"]


def failed_runs(session: Session, study: Study) -> list[Run]:
    """The study's failed runs (only the seeds its cells asked for): what a resubmit requeues."""
    return _failed(cell_runs(session, study).values())


def requeue_runs(session: Session, runs: Sequence[Run]) -> list[str]:
    """These (failed) runs back to the queue with a fresh attempt budget; they resume from
    their last checkpoint. Returns their ids, for the caller to dispatch after commit."""
    now = utcnow()
    touched: set[str] = set()
    for run in runs:
        run.status, run.attempt, run.queued_at, run.updated_at = "queued", 0, now, now
        run.worker = run.lease_expires_at = run.finished_at = None
        touched.add(run.experiment_id)
    session.flush()
    for experiment_id in touched:
        refresh_experiment_status(session, experiment_id)
    return [run.id for run in runs]


def _json_coordinates(coordinates: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in coordinates.items()}


def get_study(session: Session, study_id: str, viewer: Viewer = EVERYONE) -> Study | None:
    """The study with its cells, or None (also when it is not ``viewer``'s to see)."""
    query = (
        select(Study)
        .options(selectinload(Study.cells).selectinload(StudyCell.experiment))
        .where(Study.id == study_id, visible_to(Study.owner_id, viewer))
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one_or_none()


def study_spec_of(study: Study) -> tuple[StudySpec, str]:
    """The submitted study spec and scale of a stored study."""
    return StudySpec.model_validate(study.spec["study"]), str(study.spec["scale"])


def cell_runs(session: Session, study: Study) -> dict[int, list[Run]]:
    """Position -> the runs of that cell's seeds (only the seeds the cell asked for)."""
    cells = list(study.cells)
    experiment_ids = [c.experiment_id for c in cells]
    runs = session.scalars(
        select(Run)
        .where(Run.experiment_id.in_(experiment_ids))
        .order_by(Run.seed)
        .execution_options(populate_existing=True)
    ).all()
    by_experiment: dict[str, list[Run]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment_id, []).append(run)
    spec, scale = study_spec_of(study)
    planned = {c.position: set(c.spec.seeds) for c in expand(spec, scale=scale)}
    result: dict[int, list[Run]] = {}
    for cell in cells:
        wanted = planned.get(cell.position)
        result[cell.position] = [
            r
            for r in by_experiment.get(cell.experiment_id, [])
            if wanted is None or r.seed in wanted
        ]
    return result


def runs_version(session: Session, study: Study) -> tuple[tuple[str, str, int, int], ...]:
    """What a study's report depends on, in one small query: a run changes its numbers only
    when it records an epoch, changes status or restarts (all three move this tuple)."""
    rows = session.execute(
        select(Run.id, Run.status, Run.epochs_done, Run.attempt)
        .join(StudyCell, StudyCell.experiment_id == Run.experiment_id)
        .where(StudyCell.study_id == study.id)
        .order_by(Run.id)
    ).all()
    return tuple((r.id, r.status, r.epochs_done, r.attempt) for r in rows)


def queued_runs(session: Session, study: Study) -> list[str]:
    """Every queued run of the study's cells (the seeds they asked for)."""
    return [r.id for runs in cell_runs(session, study).values() for r in runs
            if r.status == "queued"]


def _seed_runs(
    runs: Sequence[Run],
    metrics: dict[str, list[Any]],
    flows: dict[str, list[GradFlowEpoch]],
) -> list[SeedRun]:
    seed_runs = []
    for run in runs:
        test = None
        if run.test_acc is not None and run.test_loss is not None:
            test = TestResult(
                loss=run.test_loss,
                acc=run.test_acc,
                best_epoch=run.best_epoch if run.best_epoch is not None else -1,
            )
        seed_runs.append(
            SeedRun(
                seed=run.seed,
                status=run.status,  # type: ignore[arg-type]
                layers=tuple(run.layers or ()),
                epochs=metrics.get(run.id, []),
                gradflow=flows.get(run.id, []),
                test=test,
                pack=run.pack,
                precision=run.precision,
            )
        )
    return seed_runs


def _results_of(session: Session, runs: Sequence[Run]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and gradient flow of these runs (one query each)."""
    metrics = read_metrics(session, [r.id for r in runs])
    flows = read_gradflow_epochs(session, {r.id: tuple(r.layers or ()) for r in runs})
    return metrics, flows


def study_results(session: Session, study: Study) -> list[CellResult]:
    """What every cell's runs have produced so far, cells in study order."""
    spec, scale = study_spec_of(study)
    expanded = {c.position: c for c in expand(spec, scale=scale)}
    by_cell = cell_runs(session, study)
    metrics, flows = _results_of(session, [r for runs in by_cell.values() for r in runs])
    results = []
    for cell in study.cells:
        experiment_spec = ExperimentSpec.model_validate(cell.experiment.spec)
        planned = expanded.get(cell.position)
        cell_spec = planned.spec if planned is not None else experiment_spec
        results.append(
            CellResult(
                name=cell_spec.name,
                coordinates=dict(cell.coordinates),
                spec=cell_spec,
                runs=_seed_runs(by_cell.get(cell.position, []), metrics, flows),
            )
        )
    return results


def experiment_result(session: Session, experiment: Experiment) -> CellResult:
    """One experiment's runs so far, as a one-cell study sees them (for its diagnostics)."""
    runs = list(experiment.runs)
    metrics, flows = _results_of(session, runs)
    spec = ExperimentSpec.model_validate(experiment.spec)
    return CellResult(
        name=experiment.name, coordinates={}, spec=spec, runs=_seed_runs(runs, metrics, flows)
    )


def list_studies(session: Session, limit: int = 100, viewer: Viewer = EVERYONE) -> list[Study]:
    """The newest studies ``viewer`` may see first, with their cells' experiments loaded."""
    query = (
        select(Study)
        .options(selectinload(Study.cells).selectinload(StudyCell.experiment))
        .where(visible_to(Study.owner_id, viewer))
        .order_by(Study.created_at.desc(), Study.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def cancel_study(session: Session, study: Study) -> None:
    """Ask every cell's experiment to stop (queued runs now, running ones after their epoch).

    A cell shared with another study stops there too: an experiment has one set of runs."""
    for experiment_id in dict.fromkeys(c.experiment_id for c in study.cells):
        request_cancel(session, experiment_id)


def completion(session: Session, study: Study) -> list[dict[str, Any]]:
    """The cell x seed completion matrix: per cell, per planned seed, status and epochs done."""
    spec, scale = study_spec_of(study)
    expanded = {c.position: c for c in expand(spec, scale=scale)}
    by_cell = cell_runs(session, study)
    cells = []
    for cell in study.cells:
        planned = expanded.get(cell.position)
        seeds = list(planned.spec.seeds) if planned else [r.seed for r in by_cell[cell.position]]
        epochs = planned.spec.hyperparameters.epochs if planned else None
        runs = {r.seed: r for r in by_cell.get(cell.position, [])}
        cells.append(
            {
                "position": cell.position,
                "name": planned.name if planned else cell.experiment.name,
                "experiment_id": cell.experiment_id,
                "coordinates": cell.coordinates,
                "seeds": [
                    {
                        "seed": seed,
                        "run_id": runs[seed].id if seed in runs else None,
                        "status": runs[seed].status if seed in runs else "missing",
                        "epochs_done": runs[seed].epochs_done if seed in runs else 0,
                        "epochs_planned": epochs,
                    }
                    for seed in seeds
                ],
            }
        )
    return cells


def epochs_done(
    session: Session, study_id: str, run_ids: Sequence[str]
) -> tuple[int, dict[str, int]]:
    """Epochs finished by all of a study's runs, and by each of ``run_ids`` (progress bars)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Run.epochs_done), 0))
        .join(StudyCell, StudyCell.experiment_id == Run.experiment_id)
        .where(StudyCell.study_id == study_id)
    )
    by_run = dict(session.execute(select(Run.id, Run.epochs_done).where(Run.id.in_(run_ids))).all())
    return int(total or 0), {run_id: int(done or 0) for run_id, done in by_run.items()}
