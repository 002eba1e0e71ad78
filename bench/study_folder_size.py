"""The size of a study folder (``gradlab study run --out DIR``) for a study at full scale:
its SQLite database once every run finished, and the checkpoints its unfinished runs keep.

    .venv/bin/python bench/study_folder_size.py [--study examples/seed-study.yaml]

The database: the study submitted as ``gradlab study run`` submits it, then every run's
epochs written through the worker's own calls (``runs.record_epoch``, ``runs.finish_run``)
with synthetic numbers of the real shape (each cell's gradient-flow layers). A checkpoint:
``core.checkpoints.save_checkpoint`` of each cell's real model with Adam's moments, the best
weights and the metric and gradient-flow history of all but the last epoch (the largest an
unfinished run keeps). Trains nothing; prints the figures and the machine; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy.orm import Session, sessionmaker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradlab.cli.study_folder import StudyFolder  # noqa: E402
from gradlab.core.architectures import build_model  # noqa: E402
from gradlab.core.checkpoints import TrainingState, save_checkpoint  # noqa: E402
from gradlab.core.optimization import make_optimizer  # noqa: E402
from gradlab.core.reproducibility import capture_rng_state, data_generator  # noqa: E402
from gradlab.science.layers import layer_names  # noqa: E402
from gradlab.science.records import (  # noqa: E402
    GRADFLOW_STATS,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TestResult,
)
from gradlab.science.spec import ExperimentSpec  # noqa: E402
from gradlab.science.study import StudySpec, expand, load_study  # noqa: E402
from gradlab.store import migrate, runs  # noqa: E402
from gradlab.store.session import make_engine, make_session_factory, session_scope  # noqa: E402
from gradlab.store.studies import submit_study  # noqa: E402

MB = 1e6


def synthetic_epoch(rng: random.Random, epoch: int,
                    layers: tuple[str, ...]) -> tuple[EpochMetrics, GradFlowEpoch]:
    """Numbers of the real shape (random: they compress no better than real ones)."""
    metrics = EpochMetrics(epoch, rng.uniform(1, 5), rng.random(), rng.uniform(1, 5),
                           rng.random(), 1e-3, rng.uniform(30, 90))
    windows = [{s: [rng.lognormvariate(-7, 2) for _ in layers] for s in GRADFLOW_STATS}
               for _ in range(2)]
    return metrics, GradFlowEpoch(epoch, layers, windows[0], windows[1])


def database_size(study_file: Path, folder: StudyFolder) -> tuple[int, int, int, str]:
    """(bytes of the database, runs, epochs, the report's size and time) once every run of
    the study finished."""
    study = load_study(study_file.read_text(), source=str(study_file))
    migrate.upgrade(folder.database_url, "head")
    engine = make_engine(folder.database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        run_ids = list(submit_study(session, study, "full").queued_run_ids)
    rng, epochs_written = random.Random(0), 0
    for run_id in run_ids:
        with session_scope(factory) as session:
            claimed = runs.claim_run(session, run_id, "bench", lease_seconds=600, max_attempts=3)
        assert claimed is not None
        spec = ExperimentSpec.model_validate(claimed.spec)
        layers = tuple(layer_names(spec))
        for epoch in range(spec.hyperparameters.epochs):
            metrics, gradflow = synthetic_epoch(rng, epoch, layers)
            with session_scope(factory) as session:
                runs.record_epoch(session, run_id, metrics, gradflow, None,
                                  owner=claimed.owner, lease_seconds=600)
            epochs_written += 1
        with session_scope(factory) as session:
            runs.finish_run(session, run_id, RunOutcome.SUCCEEDED, owner=claimed.owner,
                            test=TestResult(loss=1.5, acc=0.65, best_epoch=90),
                            environment={"device": "cuda", "torch": torch.__version__})
    report = write_the_report(factory, study, folder.root)
    engine.dispose()  # checkpoints the WAL into the file: its size is the folder's
    database = Path(folder.root / "gradlab.db")
    extra = sum(p.stat().st_size for p in folder.root.glob("gradlab.db-*"))
    return database.stat().st_size + extra, len(run_ids), epochs_written, report


def write_the_report(factory: sessionmaker[Session], study: StudySpec, out: Path) -> str:
    """The report as ``gradlab study run`` writes it: its size on disk and how long it took."""
    from gradlab.science.report import build_report, write_report
    from gradlab.store.studies import find_study, study_results

    started = time.perf_counter()
    with factory() as session:
        stored = find_study(session, study, "full")
        assert stored is not None
        results = study_results(session, stored)
    write_report(build_report(study.name, results, scale="full",
                              description=study.description), out)
    seconds = time.perf_counter() - started
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith("gradlab.db")]
    return f"{sum(p.stat().st_size for p in files) / MB:.1f} MB, written in {seconds:.0f} s"


def checkpoint_size(spec: ExperimentSpec) -> int:
    """A real checkpoint of the cell's model with the history of all but its last epoch."""
    model = build_model(spec)
    optimizer = make_optimizer(model.parameters(), spec.hyperparameters)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # creates Adam's moments
    layers = tuple(model.gradflow_layer_names())
    rng = random.Random(1)
    state = TrainingState()
    for epoch in range(spec.hyperparameters.epochs - 1):
        metrics, gradflow = synthetic_epoch(rng, epoch, layers)
        state.record(metrics, gradflow, model)
    blob = save_checkpoint(model=model, optimizer=optimizer, state=state,
                           rng=capture_rng_state(data_generator(0)), identity={"seed": 0})
    return len(blob)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=REPO / "examples" / "seed-study.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size, run_count, epochs, report = database_size(args.study, StudyFolder(Path(tmp)))
    study = load_study(args.study.read_text(), source=str(args.study))
    per_run = []
    print(f"machine: {platform.node()} {platform.processor()} (torch {torch.__version__})")
    print(f"database, every run finished: {size / MB:.1f} MB ({run_count} runs, {epochs} epochs)")
    print(f"report (html, json, csv, figures): {report}")
    for cell in expand(study, scale="full"):
        one = checkpoint_size(cell.spec)
        per_run += [one] * len(cell.spec.seeds)
        print(f"checkpoint of {cell.name} at its last unfinished epoch: {one / MB:.2f} MB "
              f"x {len(cell.spec.seeds)} run(s)")
    print(f"checkpoints if every run is unfinished: {sum(per_run) / MB:.1f} MB")
    print(f"folder at most (database + every checkpoint): {(size + sum(per_run)) / MB:.1f} MB; "
          f"once finished: {size / MB:.1f} MB plus the report")


if __name__ == "__main__":
    main()
