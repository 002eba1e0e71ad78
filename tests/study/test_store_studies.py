"""Studies in the store (PostgreSQL and SQLite): expansion into experiments, reuse of existing
cells and seeds, resubmission, and results read back after the worker-side repository wrote them.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gradlab.science import records
from gradlab.science.records import EpochMetrics, GradFlowEpoch
from gradlab.science.study import StudySpec
from gradlab.store import runs as run_repo
from gradlab.store.models import Experiment, Run
from gradlab.store.session import make_engine, make_session_factory, session_scope
from gradlab.store.studies import completion, get_study, study_results, submit_study

LAYERS = ("entry.conv", "head.linear")


def _study(tag: str, **extra: object) -> StudySpec:
    data = {
        "name": f"study-{tag}",
        "base": {"name": f"b-{tag}", "hyperparameters": {"epochs": 2}},
        "grid": {"depth": [8, 14]},
        "name_template": f"{tag}-d{{depth}}",
        **extra,
    }
    return StudySpec.model_validate(data)


def _experiments(session: Session, tag: str) -> int:
    return session.scalar(
        select(func.count()).select_from(Experiment).where(Experiment.name.like(f"{tag}-%"))
    )


def test_submit_expands_cells_and_resubmitting_reuses_everything(database_url: str) -> None:
    factory = make_session_factory(make_engine(database_url))
    tag = uuid.uuid4().hex[:8]
    study = _study(tag, seeds=[0, 1])
    with session_scope(factory) as session:
        first = submit_study(session, study, "full")
        assert first.created and len(first.queued_run_ids) == 4
        study_id = first.study.id
    with session_scope(factory) as session:
        again = submit_study(session, study, "full")
        assert not again.created and again.study.id == study_id
        assert sorted(again.queued_run_ids) == sorted(first.queued_run_ids)
        # the runs still wait in the queue: a resubmission sends nothing again
        assert again.newly_queued_run_ids == []
        assert _experiments(session, tag) == 2
        stored = get_study(session, study_id)
        assert [c.coordinates for c in stored.cells] == [{"depth": 8}, {"depth": 14}]
        matrix = completion(session, stored)
        assert [[s["status"] for s in c["seeds"]] for c in matrix] == [["queued"] * 2] * 2


def test_resubmitting_requeues_failed_runs_but_not_diverged_or_cancelled(
    database_url: str,
) -> None:
    factory = make_session_factory(make_engine(database_url))
    tag = uuid.uuid4().hex[:8]
    study = _study(tag, seeds=[0, 1, 2])
    with session_scope(factory) as session:
        run_ids = submit_study(session, study, "full").queued_run_ids
    outcomes = dict(zip(run_ids[:3], ("failed", "diverged", "cancelled"), strict=True))
    with session_scope(factory) as session:
        for run_id, status in outcomes.items():
            run = session.get(Run, run_id)
            run.status, run.attempt, run.error = status, 3, "worker lost"
    with session_scope(factory) as session:
        again = submit_study(session, study, "full")
        failed = next(r for r, s in outcomes.items() if s == "failed")
        assert failed in again.queued_run_ids
        assert not {r for r, s in outcomes.items() if s != "failed"} & set(again.queued_run_ids)
        run = session.get(Run, failed)
        assert (run.status, run.attempt) == ("queued", 0)
        assert session.get(Experiment, run.experiment_id).status != "failed"


def test_a_new_study_reuses_an_existing_cell_and_adds_only_missing_seeds(
    database_url: str,
) -> None:
    factory = make_session_factory(make_engine(database_url))
    tag = uuid.uuid4().hex[:8]
    with session_scope(factory) as session:
        submit_study(session, _study(tag, seeds=[0]), "full")
    wider = _study(tag, seeds=[0, 5], description="same cells, one more seed")
    with session_scope(factory) as session:
        submitted = submit_study(session, wider, "full")
        assert submitted.created and len(submitted.reused_experiment_ids) == 2
        assert _experiments(session, tag) == 2  # reused, not duplicated
        for experiment_id in submitted.reused_experiment_ids:
            seeds = session.scalars(select(Run.seed).where(Run.experiment_id == experiment_id))
            assert sorted(seeds) == [0, 5]
            assert session.get(Experiment, experiment_id).spec["seeds"] == [0, 5]
        # seed 0 of each cell already existed: only the two seed-5 runs are new, all queued
        assert len(submitted.queued_run_ids) == 4


def test_results_read_back_what_the_worker_recorded(database_url: str) -> None:
    factory = make_session_factory(make_engine(database_url))
    tag = uuid.uuid4().hex[:8]
    with session_scope(factory) as session:
        submitted = submit_study(session, _study(tag, seeds=[0, 1]), "full")
        study_id = submitted.study.id
        cells = completion(session, submitted.study)
    run_id = cells[0]["seeds"][0]["run_id"]
    with session_scope(factory) as session:
        claimed = run_repo.claim_run(session, run_id, "test", lease_seconds=60, max_attempts=3)
        assert claimed is not None
    for epoch in range(2):
        metrics = EpochMetrics(epoch, 4.0 - epoch, 0.1 * (epoch + 1), 4.1, 0.05, 1e-3, 1.0)
        flow = GradFlowEpoch(
            epoch,
            LAYERS,
            last_batch={
                "mean_abs": [1e-3 * (epoch + 1), 2e-3],
                "max_abs": [1.0, 2.0],
                "l2": [3.0, 4.0],
            },
            epoch_mean={"mean_abs": [5e-4, 6e-4], "max_abs": [0.5, 0.6], "l2": [0.7, 0.8]},
        )
        with session_scope(factory) as session:
            run_repo.record_epoch(session, run_id, metrics, flow, None, owner=claimed.owner)
    with session_scope(factory) as session:
        run_repo.finish_run(
            session,
            run_id,
            "succeeded",
            owner=claimed.owner,
            test=records.TestResult(loss=3.9, acc=0.2, best_epoch=1),
        )
    with factory() as session:
        results = study_results(session, get_study(session, study_id))
        matrix = completion(session, get_study(session, study_id))
    first = results[0]
    assert first.name == f"{tag}-d8" and first.spec.depth == 8
    done = first.run_for(0)
    assert done is not None and done.status == "succeeded"
    assert [e.train_loss for e in done.epochs] == [4.0, 3.0]
    assert done.layers == LAYERS
    assert done.gradflow[1].last_batch["mean_abs"] == [2e-3, 2e-3]
    assert done.gradflow[0].epoch_mean["l2"] == [0.7, 0.8]
    assert done.test == records.TestResult(loss=3.9, acc=0.2, best_epoch=1)
    assert first.run_for(1).status == "queued" and first.run_for(1).epochs == []
    assert matrix[0]["seeds"][0] == {
        "seed": 0,
        "run_id": run_id,
        "status": "succeeded",
        "epochs_done": 2,
        "epochs_planned": 2,
    }
