"""Gradient-flow figures drawn in a process of their own, never in the API's.

Drawing a PNG is seconds of CPU in matplotlib, which holds the GIL while it works: drawn in
the API process, one user's plots would slow every other request of that process, however
few threads they hold. One plotting process (spawned, not forked: the API has threads) takes
the figures one at a time, so the API's threads only wait for its answer; who gets to ask is
decided by the per-user render slots (``api/render_limits.py``). A plotting process that died
is replaced on the next figure.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _draw(layers: list[str], epochs: list[int], values: list[list[float]], title: str,
          log_scale: bool) -> bytes:
    """In the plotting process: the figure as PNG bytes."""
    import matplotlib.pyplot as plt

    from gradlab.science.gradflow_figure import plot_gradflow

    figure = plot_gradflow(layers, epochs, values, title=title, log_scale=log_scale)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)  # a pyplot-made figure stays registered until closed
    return buffer.getvalue()


def _plotter(replace: bool = False) -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or replace:
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def draw_png(layers: list[str], epochs: list[int], values: list[list[float]], *, title: str,
             log_scale: bool) -> bytes:
    """The gradient-flow figure as PNG bytes, drawn in the plotting process (waits for it)."""
    args = (layers, epochs, values, title, log_scale)
    try:
        return _plotter().submit(_draw, *args).result()
    except BrokenProcessPool:  # it died (killed, out of memory): a new one draws this figure
        return _plotter(replace=True).submit(_draw, *args).result()
