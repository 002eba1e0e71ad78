"""Reading gradient flow back: one query shape for the API's views and the study reports.

Rows are (run, epoch) with one column per window x statistic, each an array of a value per
layer. An array shorter than the run's layers (never written by a worker, which validates the
count) reads as NaN for the missing layers rather than shifting the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gradlab.science.records import GRADFLOW_STATS, GRADFLOW_WINDOWS, GradFlowEpoch
from gradlab.store.float_arrays import unpack_floats
from gradlab.store.models import GradFlowEpochRow


@dataclass(frozen=True)
class GradflowSeries:
    """One run's gradient-flow statistic: ``values[i][j]`` is layer ``j`` at ``epochs[i]``."""

    epochs: list[int]
    values: list[list[float]]


def _column(window: str, stat: str) -> Any:
    if stat not in GRADFLOW_STATS:
        raise ValueError(f"stat must be one of {GRADFLOW_STATS}, got {stat!r}")
    if window not in GRADFLOW_WINDOWS:
        raise ValueError(f"window must be one of {GRADFLOW_WINDOWS}, got {window!r}")
    return getattr(GradFlowEpochRow, f"{window}_{stat}")


def _epoch_matrices(
    session: Session,
    layer_counts: Mapping[str, int],
    columns: Sequence[Any],
    *,
    epoch_from: int | None = None,
    epoch_to: int | None = None,
) -> Iterator[tuple[str, int, list[list[float]]]]:
    """(run id, epoch, ``matrix[column][layer]``) in run and epoch order, in one query."""
    if not layer_counts:
        return
    table = GradFlowEpochRow
    query = select(table.run_id, table.epoch, *columns)
    query = query.where(table.run_id.in_(list(layer_counts)))
    if epoch_from is not None:
        query = query.where(table.epoch >= epoch_from)
    if epoch_to is not None:
        query = query.where(table.epoch <= epoch_to)
    for run_id, epoch, *blobs in session.execute(query.order_by(table.run_id, table.epoch)):
        count = layer_counts[run_id]
        matrix = []
        for blob in blobs:
            values = unpack_floats(blob)[:count]
            matrix.append(values + [math.nan] * (count - len(values)))
        yield run_id, epoch, matrix


def read_gradflow(
    session: Session,
    run_ids: Sequence[str],
    *,
    stat: str,
    window: str,
    layer_count: int,
    epoch_from: int | None = None,
    epoch_to: int | None = None,
) -> dict[str, GradflowSeries]:
    """One statistic in one window for these runs, epochs in order (one query)."""
    column = _column(window, stat)
    result = {run_id: GradflowSeries([], []) for run_id in run_ids}
    counts = dict.fromkeys(run_ids, layer_count)
    for run_id, epoch, matrix in _epoch_matrices(
        session, counts, [column], epoch_from=epoch_from, epoch_to=epoch_to
    ):
        result[run_id].epochs.append(epoch)
        result[run_id].values.append(matrix[0])
    return result


def read_gradflow_epochs(
    session: Session, layers_by_run: Mapping[str, tuple[str, ...]]
) -> dict[str, list[GradFlowEpoch]]:
    """Every statistic of both windows for these runs, as the records training produced."""
    windows = ("last_batch", "epoch_mean")
    columns = [_column(w, s) for w in windows for s in GRADFLOW_STATS]
    result: dict[str, list[GradFlowEpoch]] = {run_id: [] for run_id in layers_by_run}
    counts = {run_id: len(layers) for run_id, layers in layers_by_run.items()}
    for run_id, epoch, matrix in _epoch_matrices(session, counts, columns):
        by_window = {
            window: dict(zip(GRADFLOW_STATS, matrix[i * len(GRADFLOW_STATS) :], strict=False))
            for i, window in enumerate(windows)
        }
        result[run_id].append(
            GradFlowEpoch(epoch=epoch, layers=layers_by_run[run_id], **by_window)
        )
    return result


def recorded_epoch_range(session: Session, run_ids: Sequence[str]) -> tuple[int, int] | None:
    """The first and last epoch any of these runs recorded gradient flow for (None: none yet);
    a view's epoch window is clamped to it, so windows that show the same rows are one."""
    if not run_ids:
        return None
    table = GradFlowEpochRow
    row = session.execute(
        select(func.min(table.epoch), func.max(table.epoch)).where(table.run_id.in_(list(run_ids)))
    ).one()
    return None if row[0] is None else (int(row[0]), int(row[1]))
