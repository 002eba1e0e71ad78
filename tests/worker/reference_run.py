"""The fault tests' yardstick: one small run trained without interruption in the test process
(CPU, same seed), and a comparison of what a faulted run stored against it, epoch by epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import GRADFLOW_STATS, GRADFLOW_WINDOWS, TrainingResult
from gradlab.store.float_arrays import unpack_floats
from gradlab.store.models import EpochMetricsRow, GradFlowEpochRow

EPOCHS = 6
# Small enough for a shared 2-core machine, long enough (about a second an epoch or more)
# that a fault lands mid-run.
SPEC: dict[str, Any] = {
    "depth": 8,
    "width": 16,
    "hyperparameters": {"epochs": EPOCHS},
    "data": {"train_limit": 1500, "val_limit": 100, "test_limit": 100},
    "seeds": [0],
}
METRIC_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")  # not seconds


def spec_named(name: str, **changes: Any) -> dict[str, Any]:
    return {**SPEC, "name": name, **changes}


def train_reference(data_dir: Path) -> TrainingResult:
    """The same spec and seed, trained start to end here."""
    from gradlab.core.data import load_cifar
    from gradlab.core.training_loop import fit
    from gradlab.science.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate(spec_named("reference"))
    return fit(spec, spec.seeds[0], load_cifar(data_dir, "cifar100"), device="cpu")


def stored(factory: sessionmaker[Session], run_id: str) -> tuple[list[Any], dict[Any, Any]]:
    """(per-epoch metrics in epoch order, {(epoch, layer): six statistics}) of a run."""
    with factory() as session:
        metrics = session.execute(
            select(EpochMetricsRow).where(EpochMetricsRow.run_id == run_id)
            .order_by(EpochMetricsRow.epoch)
        ).scalars().all()
        flows = session.execute(
            select(GradFlowEpochRow).where(GradFlowEpochRow.run_id == run_id)
        ).scalars()
        columns = [f"{w}_{s}" for w in GRADFLOW_WINDOWS for s in GRADFLOW_STATS]
        gradflow = {}
        for row in flows:  # one row per epoch, one array per column: a value per layer
            per_column = [unpack_floats(getattr(row, c)) for c in columns]
            for layer, values in enumerate(zip(*per_column, strict=True)):
                gradflow[(row.epoch, layer)] = values
        return [(m.epoch, *(getattr(m, f) for f in METRIC_FIELDS)) for m in metrics], gradflow


def assert_matches_reference(
    factory: sessionmaker[Session], run_id: str, reference: TrainingResult
) -> None:
    """Every epoch once, none missing, and its metrics and gradient flow bit for bit those of
    the uninterrupted run."""
    metrics, gradflow = stored(factory, run_id)
    assert [m[0] for m in metrics] == list(range(EPOCHS))
    expected = [(m.epoch, *(getattr(m, f) for f in METRIC_FIELDS)) for m in reference.epochs]
    assert metrics == expected
    want = {
        (g.epoch, j): tuple(g.window(w)[s][j] for w in GRADFLOW_WINDOWS for s in GRADFLOW_STATS)
        for g in reference.gradflow
        for j in range(len(g.layers))
    }
    assert gradflow == want
