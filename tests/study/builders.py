"""Constructed study results: metric series and gradient profiles made to order."""

from __future__ import annotations

from collections.abc import Sequence

from gradlab.science import records
from gradlab.science.records import EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from gradlab.science.study_results import CellResult, SeedRun


def spec(
    name: str, depth: int = 8, *, bn: bool = False, res: bool = False, **extra: object
) -> ExperimentSpec:
    updates: dict[str, object] = {"name": name, "depth": depth, "batch_norm": bn, "residual": res}
    updates.update(extra)
    return ExperimentSpec().with_updates(updates)


def seed_run(
    seed: int,
    *,
    train_loss: Sequence[float],
    train_acc: Sequence[float] | None = None,
    val_loss: Sequence[float] | None = None,
    val_acc: Sequence[float] | None = None,
    gradients: Sequence[Sequence[float]] | None = None,
    layers: Sequence[str] | None = None,
    status: str = "succeeded",
    test: records.TestResult | None = None,
) -> SeedRun:
    """Epoch ``i`` has ``train_loss[i]`` etc.; ``gradients[i][j]`` is layer j's mean |g|."""
    n = len(train_loss)
    train_acc = train_acc if train_acc is not None else [0.5] * n
    val_loss = val_loss if val_loss is not None else list(train_loss)
    val_acc = val_acc if val_acc is not None else list(train_acc)
    if gradients is None:
        gradients = [[1e-3, 1e-3, 1e-3]] * n
    layers = (
        tuple(layers)
        if layers is not None
        else tuple(f"layer{j}" for j in range(len(gradients[0])))
    )
    epochs = [
        EpochMetrics(
            epoch=i,
            train_loss=train_loss[i],
            train_acc=train_acc[i],
            val_loss=val_loss[i],
            val_acc=val_acc[i],
            lr=1e-3,
            seconds=1.0,
        )
        for i in range(n)
    ]
    flows = [
        GradFlowEpoch(
            epoch=i,
            layers=layers,
            last_batch={
                "mean_abs": list(row),
                "max_abs": [3 * v for v in row],
                "l2": [10 * v for v in row],
            },
            epoch_mean={
                "mean_abs": list(row),
                "max_abs": [3 * v for v in row],
                "l2": [10 * v for v in row],
            },
        )
        for i, row in enumerate(gradients)
    ]
    return SeedRun(
        seed=seed,
        status=status,
        layers=layers,
        epochs=epochs,  # type: ignore[arg-type]
        gradflow=flows,
        test=test,
    )


def cell(experiment: ExperimentSpec, *runs: SeedRun) -> CellResult:
    seeds = [r.seed for r in runs] or [0]
    experiment = experiment.with_updates({"seeds": seeds}) if runs else experiment
    return CellResult(experiment.name, {}, experiment, list(runs), parameters=1000)


VANISHED = [1e-12, 1e-12, 1e-11, 1e-4]  # input side dead, only the head moves
HEALTHY = [2e-3, 1e-3, 1e-3, 2e-3]
LAYERS = ["entry.conv", "stage0.conv", "stage2.conv", "head.linear"]
