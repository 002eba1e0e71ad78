"""The metrics view of an experiment (per run and across seeds) and its final-metrics summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from gradlab.api.json_numbers import finite_list, finite_or_none
from gradlab.api.response_cache import CachedResponse
from gradlab.science.aggregate import metric_series, precision_label, summarize
from gradlab.science.records import EpochMetrics
from gradlab.science.sampling import even_indices
from gradlab.science.study_results import SeedRun
from gradlab.store.experiments import metric_epoch_counts, read_final_metrics, read_metrics
from gradlab.store.models import Experiment, Run

METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
FINAL_METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc")


@dataclass(frozen=True)
class MetricsView:
    """The metrics view (``api/view_cache.py``) with at most ``max_points`` epochs per series."""

    max_points: int | None

    def effective_max_points(self, session: Session, experiment: Experiment) -> int | None:
        """The cap as applied: None when no series is longer, so every larger number a client
        sends is the same view (and the same cache entry)."""
        if self.max_points is None:
            return None
        longest, distinct = metric_epoch_counts(session, [r.id for r in experiment.runs])
        return self.max_points if self.max_points < max(longest, distinct) else None

    def cache_key(self, session: Session, experiment: Experiment) -> tuple[Any, ...]:
        return ("metrics", self.effective_max_points(session, experiment))

    def render(self, session: Session, experiment: Experiment) -> CachedResponse:
        return render_metrics(session, experiment, self.effective_max_points(session, experiment))


def _test(run: Run) -> dict[str, Any] | None:
    if run.test_acc is None and run.test_loss is None:
        return None
    return {
        "loss": finite_or_none(run.test_loss),
        "acc": finite_or_none(run.test_acc),
        "best_epoch": run.best_epoch,
    }


def _run_series(run: Run, epochs: list[EpochMetrics], max_points: int | None) -> dict[str, Any]:
    sampling = even_indices(len(epochs), max_points)
    kept = sampling.take(epochs)
    return {
        "seed": run.seed,
        "status": run.status,
        "sampled": sampling.sampled,
        "raw_count": sampling.raw_count,
        "epochs": [m.epoch for m in kept],
        **{name: finite_list([getattr(m, name) for m in kept]) for name in METRIC_NAMES},
        "test": _test(run),
    }


def _across_seeds(
    runs: list[Run], per_run: list[list[EpochMetrics]], max_points: int | None
) -> dict[str, Any]:
    """Mean/std per epoch across seeds (the reports' conventions), sampled like the runs.

    Every metric is laid on the same epochs (those any seed reached); ``n`` counts the seeds
    there, and an epoch where a metric had no finite value reads null for that metric.
    """
    seed_runs = [
        SeedRun(seed=r.seed, status=r.status, layers=(), epochs=m)  # type: ignore[arg-type]
        for r, m in zip(runs, per_run, strict=True)
    ]
    epochs = sorted({m.epoch for metrics in per_run for m in metrics})
    counts: dict[int, int] = {}
    for metrics in per_run:
        for m in metrics:
            counts[m.epoch] = counts.get(m.epoch, 0) + 1
    sampling = even_indices(len(epochs), max_points)
    kept = sampling.take(epochs)
    mean: dict[str, list[float | None]] = {}
    std: dict[str, list[float | None]] = {}
    for name in METRIC_NAMES:
        series = metric_series(seed_runs, name)
        by_epoch = dict(zip(series.epochs, zip(series.mean, series.std, strict=True), strict=True))
        mean[name] = [finite_or_none(by_epoch[e][0]) if e in by_epoch else None for e in kept]
        std[name] = [finite_or_none(by_epoch[e][1]) if e in by_epoch else None for e in kept]
    return {
        "sampled": sampling.sampled,
        "raw_count": sampling.raw_count,
        "epochs": kept,
        "n": [counts[e] for e in kept],
        "mean": mean,
        "std": std,
    }


def render_metrics(
    session: Session, experiment: Experiment, max_points: int | None
) -> CachedResponse:
    """Per-run series (each sampled to at most ``max_points``) and the across-seed mean/std."""
    runs = list(experiment.runs)
    by_run = read_metrics(session, [r.id for r in runs])
    payload = {
        "experiment_id": experiment.id,
        "max_points": max_points,
        "runs": [_run_series(run, by_run[run.id], max_points) for run in runs],
        "across_seeds": _across_seeds(runs, [by_run[r.id] for r in runs], max_points),
    }
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return CachedResponse(body, "application/json")


def _mean_std(values: list[float]) -> dict[str, Any]:
    summary = summarize(values)
    return {"mean": summary.mean, "std": summary.std, "n": summary.n}


def summarize_experiment(session: Session, experiment: Experiment) -> dict[str, Any]:
    """Mean and std of the test result and the last epoch's metrics across succeeded seeds."""
    finished = [r for r in experiment.runs if r.status == "succeeded"]
    final = read_final_metrics(session, [r.id for r in finished])
    metrics: dict[str, dict[str, Any]] = {
        "test_acc": _mean_std([r.test_acc for r in finished if r.test_acc is not None]),
        "test_loss": _mean_std([r.test_loss for r in finished if r.test_loss is not None]),
    }
    for name in FINAL_METRIC_NAMES:
        metrics[f"final_{name}"] = _mean_std(
            [getattr(final[r.id], name) for r in finished if r.id in final]
        )
    return {"finished_seeds": len(finished), "metrics": metrics,
            "precision": precision_label(r.precision for r in finished)}
