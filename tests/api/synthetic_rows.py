"""Rows of trained runs written straight into the store, for API tests and the API benchmark.

Values come from formulas of (seed, epoch, layer), so a test computes what it expects from the
same formulas instead of hard-coding numbers. Gradient flow vanishes towards the input (the
first layer's mean |g| is about 1000x below the last one's), like VGG38 without BatchNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import insert, update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import GRADFLOW_STATS, GRADFLOW_WINDOWS, EpochMetrics
from gradlab.science.spec import ExperimentSpec
from gradlab.store.experiments import create_experiment, refresh_experiment_status
from gradlab.store.float_arrays import pack_floats
from gradlab.store.models import EpochMetricsRow, GradFlowEpochRow, Run

_STAT_SCALE = {"mean_abs": 1.0, "max_abs": 8.0, "l2": 30.0}
_WINDOW_SCALE = {"last_batch": 1.0, "epoch_mean": 0.9}


def gradflow_value(seed: int, epoch: int, layer: int, layers: int, stat: str, window: str) -> float:
    depth_factor = 10 ** (-3.0 + 3.0 * layer / max(layers - 1, 1))
    return (
        depth_factor
        * _STAT_SCALE[stat]
        * _WINDOW_SCALE[window]
        * (1.0 + 0.05 * (seed % 7))
        * math.exp(-epoch / 50)
    )


def epoch_metrics(seed: int, epoch: int) -> EpochMetrics:
    return EpochMetrics(
        epoch=epoch,
        train_loss=4.6 * math.exp(-epoch / 30) + 0.01 * (seed % 5),
        train_acc=min(1.0, 0.01 + epoch / 120 + 0.001 * (seed % 5)),
        val_loss=4.6 * math.exp(-epoch / 40) + 0.02 * (seed % 5),
        val_acc=min(1.0, 0.01 + epoch / 150 + 0.002 * (seed % 5)),
        lr=1e-3 * (1 + math.cos(math.pi * epoch / 100)) / 2,
        seconds=40.0 + seed % 3,
    )


def write_epochs(
    session: Session, run_id: str, seed: int, epochs: Sequence[int], layers: int
) -> None:
    """Metrics and every layer's statistics for these epochs of one run (no progress update)."""
    session.execute(
        insert(EpochMetricsRow),
        [{"run_id": run_id, **epoch_metrics(seed, e).to_dict()} for e in epochs],
    )
    session.execute(
        insert(GradFlowEpochRow),
        [
            {
                "run_id": run_id,
                "epoch": e,
                **{
                    f"{w}_{s}": pack_floats(
                        [gradflow_value(seed, e, j, layers, s, w) for j in range(layers)]
                    )
                    for w in GRADFLOW_WINDOWS
                    for s in GRADFLOW_STATS
                },
            }
            for e in epochs
        ],
    )


def insert_experiment(
    factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layer_names: Sequence[str],
    *,
    epochs: int | dict[int, int],
    status: str = "succeeded",
    owner_id: str | None = None,
) -> tuple[str, dict[int, str]]:
    """An experiment whose runs have ``epochs`` epochs (or {seed: epochs}) and ``status``.

    Returns (experiment id, {seed: run id}). Succeeded runs get a test result.
    """
    per_seed = epochs if isinstance(epochs, dict) else dict.fromkeys(spec.seeds, epochs)
    with factory() as session:
        experiment = create_experiment(session, spec, owner_id)
        run_ids = {run.seed: run.id for run in experiment.runs}
        for seed, run_id in run_ids.items():
            done = per_seed[seed]
            write_epochs(session, run_id, seed, range(done), len(layer_names))
            values: dict[str, object] = {
                "status": status,
                "epochs_done": done,
                "layers": list(layer_names),
                "attempt": 1,
            }
            if status == "succeeded":
                last = epoch_metrics(seed, done - 1)
                values |= {
                    "test_loss": last.val_loss,
                    "test_acc": last.val_acc,
                    "best_epoch": done - 1,
                }
            session.execute(update(Run).where(Run.id == run_id).values(**values))
        refresh_experiment_status(session, experiment.id)
        session.commit()
        return experiment.id, run_ids
