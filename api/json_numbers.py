"""Numbers to JSON-safe lists: non-finite values (a diverged run's NaN) become ``None``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def finite_list(values: Sequence[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def finite_matrix(values: Sequence[Sequence[float]] | np.ndarray) -> list[list[float | None]]:
    """Rows of floats with non-finite entries as ``None`` (fast path when all are finite)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return [[] for _ in range(len(values))]
    finite = np.isfinite(array)
    if finite.all():
        return cast(list[list[float | None]], array.tolist())
    with_none = array.astype(object)
    with_none[~finite] = None
    return cast(list[list[float | None]], with_none.tolist())
