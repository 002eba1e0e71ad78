"""The metrics and gradient-flow routes' JSON as tidy pandas DataFrames, one row per
observation, holding exactly the routes' numbers (a null becomes NaN).

pandas is an optional extra (``pip install 'gradlab[pandas]'``): the client itself, the CLI and
the API image never need it, so it is imported only when a frame is asked for.

- metrics, per run: ``experiment_id, seed, epoch, train_loss, train_acc, val_loss, val_acc,
  lr, seconds``; across seeds: ``experiment_id, epoch, n`` and ``<metric>_mean``,
  ``<metric>_std`` for each metric.
- gradient flow, per run: ``experiment_id, seed, epoch, layer_index, layer, relative_depth,
  stat, window, value``; across seeds: the same with ``n, mean, std`` for ``seed, value``.
  ``relative_depth`` places each layer from input (0) to output (1), so networks of different
  depth share one axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gradlab.client.errors import GradlabClientError

if TYPE_CHECKING:
    import pandas as pd

METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
LAYER_COLUMNS = ("layer_index", "layer", "relative_depth")


class PandasMissingError(GradlabClientError):
    """A DataFrame was asked for but pandas is not installed."""


def _pandas() -> ModuleType:
    try:
        import pandas
    except ImportError:
        raise PandasMissingError(
            "DataFrames need pandas, an optional extra: pip install 'gradlab[pandas]'"
        ) from None
    return pandas


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def relative_depths(count: int) -> list[float]:
    """Each of ``count`` layers' place from input (0.0) to output (1.0)."""
    return [0.0] if count < 2 else [j / (count - 1) for j in range(count)]


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    # the columns are named even when there is no row, so code reading them never breaks
    frame: pd.DataFrame = _pandas().DataFrame(rows, columns=list(columns))
    return frame


def metrics_frame(payload: Mapping[str, Any], *, across_seeds: bool = False) -> pd.DataFrame:
    """``GET /experiments/{id}/metrics``'s JSON as a frame (per run, or across seeds)."""
    experiment_id = payload["experiment_id"]
    if across_seeds:
        a = payload["across_seeds"]
        columns = ["experiment_id", "epoch", "n"] + [
            f"{m}_{part}" for m in METRIC_COLUMNS for part in ("mean", "std")
        ]
        rows = [
            {
                "experiment_id": experiment_id,
                "epoch": epoch,
                "n": a["n"][i],
                **{f"{m}_mean": _number(a["mean"][m][i]) for m in METRIC_COLUMNS},
                **{f"{m}_std": _number(a["std"][m][i]) for m in METRIC_COLUMNS},
            }
            for i, epoch in enumerate(a["epochs"])
        ]
        return _frame(rows, columns)
    rows = [
        {
            "experiment_id": experiment_id,
            "seed": run["seed"],
            "epoch": epoch,
            **{m: _number(run[m][i]) for m in METRIC_COLUMNS},
        }
        for run in payload["runs"]
        for i, epoch in enumerate(run["epochs"])
    ]
    return _frame(rows, ["experiment_id", "seed", "epoch", *METRIC_COLUMNS])


def gradflow_frame(payload: Mapping[str, Any], *, across_seeds: bool = False) -> pd.DataFrame:
    """``GET /experiments/{id}/gradflow``'s JSON as a frame: a row per layer and epoch (and
    seed, unless ``across_seeds``), layers in depth order."""
    layers: list[str] = list(payload["layers"])
    depths = relative_depths(len(layers))
    fixed = {
        "experiment_id": payload["experiment_id"],
        "stat": payload["stat"],
        "window": payload["window"],
    }

    def layer(j: int) -> dict[str, Any]:
        return {"layer_index": j, "layer": layers[j], "relative_depth": depths[j]}

    if across_seeds:
        a = payload["across_seeds"]
        rows = [
            {**fixed, "epoch": epoch, "n": a["n"][i], **layer(j),
             "mean": _number(a["mean"][i][j]), "std": _number(a["std"][i][j])}
            for i, epoch in enumerate(a["epochs"])
            for j in range(len(layers))
        ]
        head = ["experiment_id", "epoch", "n", *LAYER_COLUMNS, "stat", "window", "mean", "std"]
        return _frame(rows, head)
    rows = [
        {**fixed, "seed": run["seed"], "epoch": epoch, **layer(j),
         "value": _number(run["values"][i][j])}
        for run in payload["runs"]
        for i, epoch in enumerate(run["epochs"])
        for j in range(len(layers))
    ]
    head = ["experiment_id", "seed", "epoch", *LAYER_COLUMNS, "stat", "window", "value"]
    return _frame(rows, head)
