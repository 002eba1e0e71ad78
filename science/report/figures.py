"""The report's figures, each paired with the exact numbers it draws.

Every builder returns a :class:`PlotFigure`: the matplotlib figure (object API, Agg canvas, no
pyplot state), a JSON-able ``data`` dict and tidy ``rows`` for CSV, both made from the same
lists that were handed to matplotlib, so the exports are what the figure shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradlab.science.aggregate import GradFlowStats, gradflow_stats, metric_series
from gradlab.science.plot_text import as_plain_text
from gradlab.science.study_results import CellResult

CURVE_METRICS: tuple[tuple[str, str], ...] = (
    ("train_acc", "training accuracy"),
    ("val_acc", "validation accuracy"),
    ("train_loss", "training loss"),
    ("val_loss", "validation loss"),
)
# Line plots of gradient flow show at most this many epochs (first and last always kept);
# the heatmap shows every epoch.
MAX_GRADFLOW_LINES = 10


@dataclass
class PlotFigure:
    name: str  # file stem, e.g. "curves", "gradflow-vgg38"
    title: str
    caption: str
    figure: Figure
    data: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _colour(i: int, count: int) -> Any:
    return colormaps["tab10" if count <= 10 else "tab20"](i % (10 if count <= 10 else 20))


def curves_figure(cells: Sequence[CellResult]) -> PlotFigure:
    """Accuracy and loss per epoch per cell: mean line and a +-std band across seeds."""
    figure = _new_figure(12.0, 8.0)
    axes = figure.subplots(2, 2)
    data: dict[str, Any] = {"metrics": {}}
    rows: list[dict[str, Any]] = []
    for ax, (metric, label) in zip(axes.flat, CURVE_METRICS, strict=True):
        data["metrics"][metric] = {}
        for i, cell in enumerate(cells):
            series = metric_series(cell.runs, metric)
            if not series.epochs:
                continue
            x = [float(e) for e in series.epochs]
            lower = [m - s for m, s in zip(series.mean, series.std, strict=True)]
            upper = [m + s for m, s in zip(series.mean, series.std, strict=True)]
            colour = _colour(i, len(cells))
            ax.plot(x, series.mean, color=colour, linewidth=1.4, label=as_plain_text(cell.name))
            ax.fill_between(x, lower, upper, color=colour, alpha=0.18, linewidth=0)
            data["metrics"][metric][cell.name] = {
                "epochs": series.epochs,
                "n": series.n,
                "mean": series.mean,
                "std": series.std,
            }
            rows += [
                {"cell": cell.name, "metric": metric, "epoch": e, "n": n, "mean": m, "std": s}
                for e, n, m, s in zip(series.epochs, series.n, series.mean, series.std, strict=True)
            ]
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if axes.flat[0].get_lines():
        axes.flat[0].legend(fontsize=7, loc="best")
    return PlotFigure(
        name="curves",
        title="Learning curves",
        caption="Mean across seeds (line) and +-1 sample std (band; none with one seed).",
        figure=figure,
        data=data,
        rows=rows,
    )


def _line_epochs(epochs: list[int]) -> list[int]:
    if len(epochs) <= MAX_GRADFLOW_LINES:
        return list(range(len(epochs)))
    step = (len(epochs) - 1) / (MAX_GRADFLOW_LINES - 1)
    return sorted({round(k * step) for k in range(MAX_GRADFLOW_LINES)})


def _flow_rows(cell: str, flow: GradFlowStats, indices: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "cell": cell,
            "epoch": flow.epochs[i],
            "layer_index": j,
            "layer": layer,
            "n": flow.n[i],
            "mean": flow.mean[i][j],
            "std": flow.std[i][j],
        }
        for i in indices
        for j, layer in enumerate(flow.layers)
    ]


def _flow_data(flow: GradFlowStats, indices: list[int]) -> dict[str, Any]:
    return {
        "stat": flow.stat,
        "window": flow.window,
        "layers": list(flow.layers),
        "epochs": [flow.epochs[i] for i in indices],
        "n": [flow.n[i] for i in indices],
        "mean": [flow.mean[i] for i in indices],
        "std": [flow.std[i] for i in indices],
    }


def gradflow_figure(cell: CellResult, window: str, *, log_scale: bool = True) -> PlotFigure | None:
    """The seed's Figure 2 for one cell: mean |g| per layer, one line per (sampled) epoch."""
    from gradlab.science.gradflow_figure import plot_gradflow

    flow = gradflow_stats(cell.runs, "mean_abs", window)
    if not flow.epochs:
        return None
    indices = _line_epochs(flow.epochs)
    data = _flow_data(flow, indices)
    figure = plot_gradflow(
        list(flow.layers),
        data["epochs"],
        data["mean"],
        title=f"{cell.name}: mean |g| per layer ({window.replace('_', ' ')}, mean over seeds)",
        log_scale=log_scale,
    )
    return PlotFigure(
        name=f"gradflow-{cell.name}",
        title=f"Gradient flow: {cell.name}",
        caption=(
            f"Mean |gradient| of each weight tensor in depth order, {window.replace('_', ' ')}, "
            f"averaged over seeds; {'log' if log_scale else 'linear'} scale "
            "(zeros cannot show on a log axis)."
        ),
        figure=figure,
        data=data,
        rows=_flow_rows(cell.name, flow, indices),
    )


def heatmap_figure(cell: CellResult, window: str) -> PlotFigure | None:
    """Layers x epochs heatmap of log10(mean |g|) for one cell, every epoch."""
    flow = gradflow_stats(cell.runs, "mean_abs", window)
    if not flow.epochs:
        return None
    indices = list(range(len(flow.epochs)))
    image = [
        [_log10(flow.mean[i][j]) for i in indices] for j in range(len(flow.layers))
    ]  # rows = layers, columns = epochs
    figure = _new_figure(min(4.0 + 0.12 * len(indices), 16.0), 2.0 + 0.16 * len(flow.layers))
    ax = figure.add_subplot()
    shown = ax.imshow(image, aspect="auto", interpolation="nearest", cmap="magma", origin="upper")
    ax.set_yticks(range(len(flow.layers)), list(flow.layers), fontsize=6)
    ticks = indices if len(indices) <= 20 else indices[:: max(1, len(indices) // 10)]
    ax.set_xticks(ticks, [str(flow.epochs[i]) for i in ticks], fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_title(as_plain_text(f"{cell.name}: log10 mean |g|"))
    figure.colorbar(shown, ax=ax, label="log10 mean |g|")
    return PlotFigure(
        name=f"heatmap-{cell.name}",
        title=f"Gradient heatmap: {cell.name}",
        caption="log10 of mean |gradient| per layer (rows, depth order) and epoch (columns).",
        figure=figure,
        data=_flow_data(flow, indices),
        rows=_flow_rows(cell.name, flow, indices),
    )


def _log10(value: float) -> float:
    return math.log10(value) if math.isfinite(value) and value > 0 else math.nan


def _variant(cell: CellResult) -> tuple[bool, bool]:
    return cell.spec.batch_norm, cell.spec.residual


def comparison_groups(cells: Sequence[CellResult]) -> list[list[CellResult]]:
    """Cells that differ only in batch_norm/residual (plain vs BN vs BN+res), >= 2 per group."""
    groups: dict[str, list[CellResult]] = {}
    for cell in cells:
        dump = cell.spec.model_dump(
            mode="json", exclude={"name", "seeds", "batch_norm", "residual"}
        )
        groups.setdefault(repr(sorted(dump.items())), []).append(cell)
    return [sorted(g, key=_variant) for g in groups.values() if len(g) >= 2]


def comparison_figure(group: Sequence[CellResult], window: str) -> PlotFigure | None:
    """Plain vs BN vs BN+residual side by side: first and last epoch's mean |g| per layer."""
    flows = [(c, gradflow_stats(c.runs, "mean_abs", window)) for c in group]
    flows = [(c, f) for c, f in flows if f.epochs]
    if len(flows) < 2:
        return None
    figure = _new_figure(5.0 * len(flows), 4.8)
    axes = figure.subplots(1, len(flows), sharey=True, squeeze=False)[0]
    data: dict[str, Any] = {"stat": "mean_abs", "window": window, "cells": []}
    rows: list[dict[str, Any]] = []
    for ax, (cell, flow) in zip(axes, flows, strict=True):
        indices = sorted({0, len(flow.epochs) - 1})
        positions = list(range(len(flow.layers)))
        for k, i in enumerate(indices):
            shown = [v if math.isfinite(v) and v > 0 else math.nan for v in flow.mean[i]]
            ax.plot(
                positions,
                shown,
                marker="o",
                markersize=2.5,
                linewidth=1.0,
                color="tab:blue" if k == 0 and len(indices) > 1 else "tab:red",
                label=f"epoch {flow.epochs[i]}",
            )
        ax.set_yscale("log")
        ax.set_xticks(positions, list(flow.layers), rotation="vertical", fontsize=5)
        ax.set_title(as_plain_text(cell.name))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        data["cells"].append({"name": cell.name, **_flow_data(flow, indices)})
        rows += _flow_rows(cell.name, flow, indices)
    axes[0].set_ylabel("mean |g| (log)")
    names = [c.name for c, _ in flows]
    return PlotFigure(
        name="compare-" + "-vs-".join(names),
        title="Gradient flow side by side: " + " vs ".join(names),
        caption="First and last epoch's mean |gradient| per layer, same log scale for all panels.",
        figure=figure,
        data=data,
        rows=rows,
    )


def weight_decay_groups(cells: Sequence[CellResult]) -> list[list[CellResult]]:
    """Cells that differ only in weight decay, one of them without it, by weight decay."""
    groups: dict[str, list[CellResult]] = {}
    for cell in cells:
        dump = cell.spec.model_dump(mode="json", exclude={"name", "seeds"})
        dump["hyperparameters"].pop("weight_decay")
        groups.setdefault(repr(sorted(dump.items())), []).append(cell)
    return [
        sorted(g, key=_weight_decay)
        for g in groups.values()
        if len(g) >= 2 and any(_weight_decay(c) == 0 for c in g)
    ]


def _weight_decay(cell: CellResult) -> float:
    return cell.spec.hyperparameters.weight_decay


def weight_decay_figure(group: Sequence[CellResult]) -> PlotFigure | None:
    """Training (solid) and validation (dashed) loss per epoch, one colour per weight decay:
    overfitting is the dashed line turning up while the solid one keeps falling, and weight
    decay's effect the distance between the two lines of a colour."""
    shown = [c for c in group if metric_series(c.runs, "val_loss").epochs]
    if len(shown) < 2:
        return None
    figure = _new_figure(7.0, 4.8)
    ax = figure.add_subplot()
    data: dict[str, Any] = {"cells": []}
    rows: list[dict[str, Any]] = []
    for i, cell in enumerate(shown):
        entry: dict[str, Any] = {"name": cell.name, "weight_decay": _weight_decay(cell)}
        for metric, style in (("train_loss", "-"), ("val_loss", "--")):
            series = metric_series(cell.runs, metric)
            ax.plot([float(e) for e in series.epochs], series.mean, style, color=_colour(i, 10),
                    linewidth=1.4, label=f"{_weight_decay(cell):g} {metric.split('_')[0]}")
            entry[metric] = {"epochs": series.epochs, "n": series.n, "mean": series.mean,
                             "std": series.std}
            rows += [
                {"cell": cell.name, "weight_decay": _weight_decay(cell), "metric": metric,
                 "epoch": e, "n": n, "mean": m, "std": sd}
                for e, n, m, sd in zip(series.epochs, series.n, series.mean, series.std,
                                       strict=True)
            ]
        data["cells"].append(entry)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss (mean over seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, title="weight decay", title_fontsize=7, ncols=2)
    base = shown[0].name
    ax.set_title(as_plain_text(f"{base}: training and validation loss by weight decay"),
                 fontsize=9)
    return PlotFigure(
        name=f"weight-decay-{base}",
        title=f"Weight decay: {base} and its siblings",
        caption="Training loss (solid) and validation loss (dashed) per epoch, mean over seeds, "
        "one colour per weight decay: without it the validation loss turns up while the "
        "training loss keeps falling.",
        figure=figure,
        data=data,
        rows=rows,
    )


def study_figures(cells: Sequence[CellResult], window: str) -> list[PlotFigure]:
    """Every figure of the report, in the order the report shows them."""
    figures: list[PlotFigure] = [curves_figure(cells)]
    for group in weight_decay_groups(cells):
        wd_figure = weight_decay_figure(group)
        if wd_figure is not None:
            figures.append(wd_figure)
    for group in comparison_groups(cells):
        fig = comparison_figure(group, window)
        if fig is not None:
            figures.append(fig)
    for cell in cells:
        for fig in (gradflow_figure(cell, window), heatmap_figure(cell, window)):
            if fig is not None:
                figures.append(fig)
    return figures
