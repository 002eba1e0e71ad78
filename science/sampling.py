"""Down-sampling of long per-epoch series for display (``max_points``), pure Python.

Two ways to choose which epochs to keep, both always keeping the first and the last:

- :func:`even_indices` spreads the kept points evenly. Every series of a response can share the
  same indices, so the epochs of different seeds stay aligned.
- :func:`minmax_indices` splits the middle into buckets and keeps each bucket's lowest and
  highest point, so a spike (a divergence, a learning-rate restart) survives the sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Sampling:
    """Which positions of a series to keep, and whether anything was dropped."""

    indices: list[int]
    raw_count: int

    @property
    def sampled(self) -> bool:
        return len(self.indices) < self.raw_count

    def take(self, series: Sequence[T]) -> list[T]:
        """The kept items of ``series`` (which must have ``raw_count`` items)."""
        return [series[i] for i in self.indices]


def _check(max_points: int | None) -> None:
    if max_points is not None and max_points < 2:
        raise ValueError("max_points must be at least 2 (the first and the last point are kept)")


def even_indices(count: int, max_points: int | None) -> Sampling:
    """At most ``max_points`` evenly spread positions of ``range(count)``, first and last kept."""
    _check(max_points)
    if max_points is None or count <= max_points:
        return Sampling(list(range(count)), count)
    step = (count - 1) / (max_points - 1)
    # rounding can only repeat a position when count <= max_points, excluded above
    indices = [round(i * step) for i in range(max_points)]
    return Sampling(indices, count)


def minmax_indices(values: Sequence[float], max_points: int | None) -> Sampling:
    """At most ``max_points`` positions: first, last and each bucket's min and max of ``values``.

    Non-finite values (a diverged loss) count as extremes, so they are kept when a bucket has one.
    """
    _check(max_points)
    count = len(values)
    if max_points is None or count <= max_points:
        return Sampling(list(range(count)), count)
    inner = range(1, count - 1)
    budget = max_points - 2
    buckets = max(1, budget // 2) if budget else 0
    size = len(inner) / buckets if buckets else 0.0
    finite = [v for v in values if math.isfinite(v)]
    centre = math.fsum(finite) / len(finite) if finite else 0.0
    kept = {0, count - 1}
    for b in range(buckets):
        bucket = inner[int(b * size) : int((b + 1) * size)]
        if not bucket:
            continue
        nonfinite = [i for i in bucket if not math.isfinite(values[i])]
        # the point farther from the series' mean first: it is the one to keep with one slot
        extremes = nonfinite[:1] or sorted(
            (min(bucket, key=values.__getitem__), max(bucket, key=values.__getitem__)),
            key=lambda i: -abs(values[i] - centre),
        )
        for i in extremes:
            if len(kept) < max_points:
                kept.add(i)
    return Sampling(sorted(kept), count)
