"""The gradient-flow figure, in the seed's style: one line per epoch over the layers in depth
order, layer names as x tick labels, optional log scale.

Uses matplotlib's object API with the Agg canvas (no pyplot state), so it is safe in workers
and threads and needs no display.
"""

from __future__ import annotations

import math

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradlab.science.plot_text import as_plain_text


def plot_gradflow(layers: list[str], epochs: list[int], values: list[list[float]], *,
                  title: str = "", log_scale: bool = False) -> Figure:
    """``values[i][j]`` is layer ``j`` at ``epochs[i]``; returns the figure (not saved)."""
    if len(values) != len(epochs):
        raise ValueError(f"{len(values)} rows of values for {len(epochs)} epochs")
    for i, row in enumerate(values):
        if len(row) != len(layers):
            raise ValueError(f"row {i} has {len(row)} values for {len(layers)} layers")
    width = min(max(6.0, 0.22 * len(layers) + 2.0), 30.0)
    figure = Figure(figsize=(width, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = colormaps["viridis"]
    positions = list(range(len(layers)))
    for i, (epoch, row) in enumerate(zip(epochs, values, strict=True)):
        # Log axes cannot show zeros or non-finite values; leave gaps rather than lie.
        shown = [v if math.isfinite(v) and (v > 0 or not log_scale) else math.nan for v in row]
        colour = colours(i / max(len(epochs) - 1, 1))
        axes.plot(positions, shown, marker="o", markersize=2.5, linewidth=1.0, alpha=0.85,
                  color=colour, label=f"epoch {epoch}")
    if not log_scale:
        axes.axhline(0, linewidth=0.8, color="k")
    axes.set_xticks(positions, layers, rotation="vertical", fontsize=7)
    axes.set_xlim(-0.5, len(layers) - 0.5)
    axes.set_xlabel("Layers")
    axes.set_ylabel("Average gradient")
    if log_scale:
        axes.set_yscale("log")
    axes.set_title(as_plain_text(title) if title else "Gradient flow")
    axes.grid(True, alpha=0.3)
    if 0 < len(epochs) <= 12:
        axes.legend(fontsize=7, loc="best")
    elif epochs:
        # Many epochs: a colour bar says which shade is which epoch.
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(norm=Normalize(min(epochs), max(epochs)), cmap=colours)
        figure.colorbar(mappable, ax=axes, label="epoch")
    return figure
