"""Mean and standard deviation across seeds, epoch by epoch, with the count behind each number.

Seeds may be at different epochs (a study still running): epoch ``e`` aggregates the seeds that
have finished it, and ``n`` says how many. Conventions (also in the report):

- ``std`` is the sample standard deviation (ddof=1) across seeds when ``n >= 2``, and ``0.0``
  when ``n == 1`` (one seed has no spread to show; ``n`` tells the reader there was one).
- A run's *final* value is its last finished epoch's; a cell's final value aggregates those.
- Precision: the seeds of one experiment share its spec, so they normally computed in one
  precision; where ``auto`` resolved differently on different workers (a GPU and a CPU without
  bf16 units), the seeds are still aggregated together, but never silently: the cell's
  ``precision`` then reads ``mixed (bf16 x2, fp32 x1)`` (``precision_label``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gradlab.science.study_results import SeedRun, check_window_and_stat

METRICS: tuple[str, ...] = ("train_loss", "train_acc", "val_loss", "val_acc")


@dataclass(frozen=True)
class Summary:
    """Mean +- std of ``n`` values (one per seed)."""

    mean: float | None
    std: float | None
    n: int

    def format(self, digits: int = 3) -> str:
        if self.n == 0 or self.mean is None:
            return "-"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} +- {self.std:.{digits}f} (n={self.n})"


@dataclass(frozen=True)
class SeriesStats:
    """One metric per epoch across seeds: ``mean[i]`` over ``n[i]`` seeds at ``epochs[i]``."""

    epochs: list[int]
    n: list[int]
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class GradFlowStats:
    """Per-layer gradient statistic per epoch across seeds: ``mean[i][j]`` = layer j, epochs[i]."""

    layers: tuple[str, ...]
    epochs: list[int]
    n: list[int]
    mean: list[list[float]]
    std: list[list[float]]
    stat: str
    window: str


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample std (0.0 for one value) of finite values; NaN/inf values are skipped."""
    finite = [float(v) for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Summary(None, None, 0)
    mean = math.fsum(finite) / n
    if n == 1:
        return Summary(mean, 0.0, 1)
    var = math.fsum((v - mean) ** 2 for v in finite) / (n - 1)
    return Summary(mean, math.sqrt(var), n)


def precision_label(precisions: Iterable[str | None]) -> str | None:
    """What a group of runs computed in: ``fp32``, ``bf16``, ``mixed (bf16 x2, fp32 x1)``, or
    None when no run has recorded one yet."""
    counts = Counter(p for p in precisions if p is not None)
    if not counts:
        return None
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed (" + ", ".join(f"{p} x{n}" for p, n in sorted(counts.items())) + ")"


def metric_series(runs: Sequence[SeedRun], metric: str) -> SeriesStats:
    """``metric`` (train_loss, train_acc, val_loss, val_acc, lr) per epoch across seeds."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for e in run.epochs:
            by_epoch.setdefault(e.epoch, []).append(float(getattr(e, metric)))
    epochs = sorted(by_epoch)
    summaries = [summarize(by_epoch[e]) for e in epochs]
    keep = [(e, s) for e, s in zip(epochs, summaries, strict=True) if s.n > 0]
    return SeriesStats(
        epochs=[e for e, _ in keep],
        n=[s.n for _, s in keep],
        mean=[float(s.mean) for _, s in keep],  # type: ignore[arg-type]
        std=[float(s.std) for _, s in keep],  # type: ignore[arg-type]
    )


def final_summary(runs: Sequence[SeedRun], metric: str) -> Summary:
    """``metric`` at each run's last finished epoch, across seeds."""
    return summarize([float(getattr(r.epochs[-1], metric)) for r in runs if r.epochs])


def summarize_test(runs: Sequence[SeedRun], field: str) -> Summary:
    """Test ``loss`` or ``acc`` (best-validation weights) across the seeds that have one."""
    return summarize([float(getattr(r.test, field)) for r in runs if r.test is not None])


def gradflow_stats(
    runs: Sequence[SeedRun], stat: str = "mean_abs", window: str = "last_batch"
) -> GradFlowStats:
    """One gradient statistic per layer and epoch, mean and std across seeds."""
    check_window_and_stat(window, stat)
    layers = next((r.layers for r in runs if r.layers), ())
    by_epoch: dict[int, list[list[float]]] = {}
    for run in runs:
        # a queued or just-started seed has recorded no epoch yet, and so no layers: nothing
        # to add, and no disagreement (a report of a study mid-way must still render)
        if run.layers and run.layers != layers:
            raise ValueError(f"seed {run.seed} has different layers from the other seeds")
        for g in run.gradflow:
            by_epoch.setdefault(g.epoch, []).append(list(g.window(window)[stat]))
    epochs = sorted(by_epoch)
    mean: list[list[float]] = []
    std: list[list[float]] = []
    n: list[int] = []
    for epoch in epochs:
        rows = by_epoch[epoch]
        per_layer = [summarize([row[j] for row in rows]) for j in range(len(layers))]
        mean.append([s.mean if s.mean is not None else math.nan for s in per_layer])
        std.append([s.std if s.std is not None else math.nan for s in per_layer])
        n.append(len(rows))
    return GradFlowStats(layers, epochs, n, mean, std, stat, window)
