"""The gradient-flow view of an experiment, rendered as JSON, a tidy CSV or the seed-style PNG.

All three come from the same read (one query on ``gradflow_epochs`` for every selected run), so
the CSV holds exactly the numbers of the JSON's ``runs`` and the PNG draws them (one seed) or
their mean across seeds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy.orm import Session

from gradlab.api.errors import InvalidParameterError
from gradlab.api.json_numbers import finite_matrix
from gradlab.api.plot_process import draw_png
from gradlab.api.response_cache import CachedResponse
from gradlab.science.aggregate import GradFlowStats, gradflow_stats
from gradlab.science.layers import layer_names as spec_layer_names
from gradlab.science.records import GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from gradlab.science.study_results import SeedRun
from gradlab.store.gradflow import GradflowSeries, read_gradflow, recorded_epoch_range
from gradlab.store.models import Experiment, Run

GradflowFormat = Literal["json", "csv", "png"]

# One figure at a time is handed to the plotting process (which draws one at a time anyway):
# the API's threads that wait for it queue here, in the order the render slots let them in.
_PLOT_LOCK = threading.Lock()


@dataclass(frozen=True)
class GradflowQuery:
    """The gradient-flow view (``api/view_cache.py``) as a client asks for it."""

    stat: str = "mean_abs"
    window: str = "last_batch"
    seed: int | None = None
    epoch_from: int | None = None
    epoch_to: int | None = None
    format: GradflowFormat = "json"
    log_scale: bool = False

    def shown(self, session: Session, experiment: Experiment) -> GradflowQuery:
        """The same view with its epoch window clamped to the epochs the selected runs
        recorded: every window that shows the same rows is one query (and one cache entry),
        whatever integers the client sent. 422 for a window that ends before it starts or a
        seed the experiment does not have."""
        if (self.epoch_from is not None and self.epoch_to is not None
                and self.epoch_from > self.epoch_to):
            raise InvalidParameterError(
                "epoch_from", f"epoch_from ({self.epoch_from}) is after epoch_to ({self.epoch_to})"
            )
        recorded = recorded_epoch_range(session, [r.id for r in select_runs(experiment, self.seed)])
        if recorded is None:
            return replace(self, epoch_from=None, epoch_to=None)
        first, last = recorded
        start = min(max(self.epoch_from or 0, first), last + 1)
        end = max(min(last if self.epoch_to is None else self.epoch_to, last), first - 1)
        if start > end:  # nothing recorded inside the window: one empty view
            return replace(self, epoch_from=last + 1, epoch_to=last + 1)
        return replace(self, epoch_from=start, epoch_to=end)

    def cache_key(self, session: Session, experiment: Experiment) -> tuple[Any, ...]:
        shown = self.shown(session, experiment)
        return ("gradflow", shown.stat, shown.window, shown.seed, shown.epoch_from,
                shown.epoch_to, shown.format, shown.log_scale)

    def render(self, session: Session, experiment: Experiment) -> CachedResponse:
        return render_gradflow(session, experiment, self.shown(session, experiment))


def recorded_layer_names(experiment: Experiment, runs: list[Run]) -> list[str]:
    """The layers as a worker recorded them, else as the spec's model defines them."""
    for run in runs:
        if run.layers:
            return list(run.layers)
    return spec_layer_names(ExperimentSpec.model_validate(experiment.spec))


def select_runs(experiment: Experiment, seed: int | None) -> list[Run]:
    if seed is None:
        return list(experiment.runs)
    runs = [r for r in experiment.runs if r.seed == seed]
    if not runs:
        seeds = ", ".join(str(r.seed) for r in experiment.runs)
        raise InvalidParameterError(
            "seed", f"seed {seed} is not in this experiment (seeds: {seeds})"
        )
    return runs


def render_gradflow(
    session: Session, experiment: Experiment, query: GradflowQuery
) -> CachedResponse:
    """Read and render one gradient-flow view of an experiment (its runs already loaded)."""
    runs = select_runs(experiment, query.seed)
    layers = recorded_layer_names(experiment, runs)
    series = read_gradflow(
        session,
        [r.id for r in runs],
        stat=query.stat,
        window=query.window,
        layer_count=len(layers),
        epoch_from=query.epoch_from,
        epoch_to=query.epoch_to,
    )
    by_run = [(run, series[run.id]) for run in runs]
    if query.format == "csv":
        response = _csv(experiment.id, layers, by_run, query)
    elif query.format == "png":
        response = _png(experiment, layers, by_run, query)
    else:
        response = _json(experiment.id, layers, by_run, query)
    return response


def _across_seeds(
    layers: list[str], by_run: list[tuple[Run, GradflowSeries]], query: GradflowQuery
) -> GradFlowStats:
    """Mean/std per layer and epoch across the runs shown (the reports' conventions)."""
    names = tuple(layers)
    seed_runs = [
        SeedRun(
            seed=run.seed,
            status=run.status,  # type: ignore[arg-type]
            layers=names,
            # only the one statistic that was read; the aggregation reads nothing else
            gradflow=[
                GradFlowEpoch(epoch, names, {query.stat: row}, {query.stat: row})
                for epoch, row in zip(s.epochs, s.values, strict=True)
            ],
        )
        for run, s in by_run
    ]
    return gradflow_stats(seed_runs, query.stat, query.window)


def _json(
    experiment_id: str,
    layers: list[str],
    by_run: list[tuple[Run, GradflowSeries]],
    query: GradflowQuery,
) -> CachedResponse:
    across = _across_seeds(layers, by_run, query)
    payload = {
        "experiment_id": experiment_id,
        "stat": query.stat,
        "window": query.window,
        "layers": layers,
        "runs": [
            {
                "seed": run.seed,
                "status": run.status,
                "epochs": s.epochs,
                "values": finite_matrix(s.values) if s.values else [],
            }
            for run, s in by_run
        ],
        "across_seeds": {
            "epochs": across.epochs,
            "n": across.n,
            "mean": finite_matrix(across.mean) if across.epochs else [],
            "std": finite_matrix(across.std) if across.epochs else [],
        },
    }
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return CachedResponse(body, "application/json")


CSV_COLUMNS = ("experiment_id", "seed", "epoch", "layer_index", "layer", "stat", "window", "value")


def _csv(
    experiment_id: str,
    layers: list[str],
    by_run: list[tuple[Run, GradflowSeries]],
    query: GradflowQuery,
) -> CachedResponse:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run, s in by_run:
        for epoch, row in zip(s.epochs, s.values, strict=True):
            for j, value in enumerate(row):
                shown = repr(value) if math.isfinite(value) else ""
                writer.writerow(
                    (experiment_id, run.seed, epoch, j, layers[j], query.stat, query.window, shown)
                )
    name = f"gradflow-{experiment_id}-{query.stat}-{query.window}.csv"
    return CachedResponse(
        out.getvalue().encode(),
        "text/csv; charset=utf-8",
        (("content-disposition", f'attachment; filename="{name}"'),),
    )


def _png(
    experiment: Experiment,
    layers: list[str],
    by_run: list[tuple[Run, GradflowSeries]],
    query: GradflowQuery,
) -> CachedResponse:
    if len(by_run) == 1:
        run, s = by_run[0]
        epochs, values = s.epochs, s.values
        who = f"seed {run.seed}"
    else:
        across = _across_seeds(layers, by_run, query)
        epochs, values = across.epochs, across.mean
        who = f"mean of {len(by_run)} seeds"
    title = f"{experiment.name}: {query.stat} ({query.window}), {who}"
    with _PLOT_LOCK:
        body = draw_png(layers, epochs, values, title=title, log_scale=query.log_scale)
    return CachedResponse(body, "image/png")
