"""The Python client's DataFrames against a real API process: their shape and every value equal
the JSON routes' (a null is NaN), and examples/gradflow_vgg08_vs_vgg38.py draws exactly the
client's numbers. Without pandas the client says which extra to install."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gradlab.client import GradlabClient
from gradlab.client.frames import METRIC_COLUMNS
from gradlab.science.layers import layer_names
from gradlab.science.spec import ExperimentSpec
from tests.service.conftest import LAYERS, StoreWorker, epoch_numbers, gradflow_numbers
from tests.support.processes import REPO


@pytest.fixture(scope="module")
def recorded(api_url: str, worker: StoreWorker) -> dict[str, Any]:
    """Two seeds, 3 and 2 epochs (so n differs), one NaN loss (a null in the JSON)."""
    spec = {"name": "frames", "depth": 8, "width": 8, "hyperparameters": {"epochs": 3},
            "data": {"train_limit": 200}, "seeds": [3, 4]}
    created = httpx.post(f"{api_url}/experiments", json=spec, timeout=30).json()
    first, second = created["runs"]
    worker.claim(first["id"])
    for epoch in range(3):
        worker.epoch(first["id"], 3, epoch)
    worker.finish(first["id"])
    worker.claim(second["id"])
    worker.epoch(second["id"], 4, 0)
    nan_loss = replace(epoch_numbers(4, 1), train_loss=math.nan)
    worker.epoch(second["id"], 4, 1, metrics=nan_loss)
    return created


def _same(frame_values: Any, json_values: list[float | None]) -> None:
    expected = [math.nan if v is None else v for v in json_values]
    assert list(frame_values) == pytest.approx(expected, nan_ok=True, rel=0, abs=0)


def test_metrics_frames_hold_the_routes_numbers(api_url: str, recorded: dict[str, Any]) -> None:
    experiment_id = recorded["id"]
    body = httpx.get(f"{api_url}/experiments/{experiment_id}/metrics").json()
    with GradlabClient(api_url, token="") as client:
        per_run = client.metrics_frame(experiment_id)
        across = client.metrics_frame(experiment_id, across_seeds=True)

    assert list(per_run.columns) == ["experiment_id", "seed", "epoch", *METRIC_COLUMNS]
    assert per_run.shape == (5, 3 + len(METRIC_COLUMNS))
    for run in body["runs"]:
        rows = per_run[per_run["seed"] == run["seed"]]
        assert list(rows["epoch"]) == run["epochs"]
        for metric in METRIC_COLUMNS:
            _same(rows[metric], run[metric])
    nan_row = per_run[(per_run["seed"] == 4) & (per_run["epoch"] == 1)]
    assert math.isnan(nan_row["train_loss"].item())

    a = body["across_seeds"]
    assert across.shape == (3, 3 + 2 * len(METRIC_COLUMNS))
    assert list(across["epoch"]) == a["epochs"] == [0, 1, 2]
    assert list(across["n"]) == a["n"] == [2, 2, 1]
    for metric in METRIC_COLUMNS:
        _same(across[f"{metric}_mean"], a["mean"][metric])
        _same(across[f"{metric}_std"], a["std"][metric])


@pytest.mark.parametrize(("stat", "window"), [("mean_abs", "last_batch"), ("l2", "epoch_mean")])
def test_gradflow_frames_hold_the_routes_numbers(
    api_url: str, recorded: dict[str, Any], stat: str, window: str
) -> None:
    experiment_id = recorded["id"]
    body = httpx.get(f"{api_url}/experiments/{experiment_id}/gradflow",
                     params={"stat": stat, "window": window}).json()
    with GradlabClient(api_url, token="") as client:
        per_run = client.gradflow_frame(experiment_id, stat=stat, window=window)  # type: ignore[arg-type]
        across = client.gradflow_frame(experiment_id, stat=stat, window=window,  # type: ignore[arg-type]
                                       across_seeds=True)
    layers = body["layers"]
    assert tuple(layers) == LAYERS

    # a row per seed, epoch and layer: (3 + 2 epochs) x 9 layers
    assert per_run.shape == (5 * len(layers), 9)
    assert set(per_run["stat"]) == {stat} and set(per_run["window"]) == {window}
    for run in body["runs"]:
        for i, epoch in enumerate(run["epochs"]):
            rows = per_run[(per_run["seed"] == run["seed"]) & (per_run["epoch"] == epoch)]
            assert list(rows["layer"]) == layers
            assert list(rows["layer_index"]) == list(range(len(layers)))
            depths = [j / (len(layers) - 1) for j in range(len(layers))]
            assert list(rows["relative_depth"]) == depths
            _same(rows["value"], run["values"][i])

    a = body["across_seeds"]
    assert across.shape == (len(a["epochs"]) * len(layers), 10)
    for i, epoch in enumerate(a["epochs"]):
        rows = across[across["epoch"] == epoch]
        assert set(rows["n"]) == {a["n"][i]}
        _same(rows["mean"], a["mean"][i])
        _same(rows["std"], a["std"][i])


def _example() -> ModuleType:
    path = REPO / "examples" / "gradflow_vgg08_vs_vgg38.py"
    spec = importlib.util.spec_from_file_location("gradflow_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_draws_vgg08_against_vgg38_from_the_server(
    api_url: str, worker: StoreWorker, unique_name: str, tmp_path: Path,
) -> None:
    study = {"name": unique_name,
             "base": {"name": "vgg", "width": 8, "hyperparameters": {"epochs": 2},
                      "data": {"train_limit": 200}, "seeds": [0, 1]},
             "grid": {"depth": [8, 38]}, "name_template": "vgg{depth:02d}"}
    created = httpx.post(f"{api_url}/studies", json=study, timeout=30)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    cells = httpx.get(f"{api_url}/studies/{study_id}").json()["cells"]
    for cell in cells:
        spec = httpx.get(f"{api_url}/experiments/{cell['experiment_id']}").json()["spec"]
        layers = tuple(layer_names(ExperimentSpec.model_validate(spec)))
        for seat in cell["seeds"]:
            worker.claim(seat["run_id"])
            for epoch in range(2):
                worker.epoch(seat["run_id"], seat["seed"], epoch,
                             gradflow=gradflow_numbers(seat["seed"], epoch, layers))
            worker.finish(seat["run_id"])

    example = _example()
    with GradlabClient(api_url, token="") as client:
        ids = example.study_cells(client, study_id, ("vgg08", "vgg38"))
        figure = example.draw(client, ids)
        flows = [client.gradflow(i) for i in ids]
    lines = figure.axes[0].get_lines()
    # first and last epoch of each: 9 then 39 layers, at the API's means and relative depths
    assert [len(line.get_xdata()) for line in lines] == [9, 9, 39, 39]
    for k, flow in enumerate(flows):
        for e, line in zip((0, -1), lines[2 * k: 2 * k + 2], strict=True):
            assert list(line.get_ydata()) == flow.across_seeds["mean"][e]
            assert list(line.get_xdata())[-1] == 1.0
    assert figure.axes[0].get_yscale() == "log"

    # and as a command: a PNG written
    out = tmp_path / "flow.png"
    done = subprocess.run([sys.executable, str(REPO / "examples/gradflow_vgg08_vs_vgg38.py"),
                           "--url", api_url, "--study", study_id, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=_client_env())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_pandas_the_client_names_the_extra_to_install(
    api_url: str, recorded: dict[str, Any]
) -> None:
    # pandas hidden from this one process (sys.modules entry None makes its import fail)
    script = (
        "import sys; sys.modules['pandas'] = None\n"
        "from gradlab.client import GradlabClient, PandasMissingError\n"
        f"client = GradlabClient({api_url!r}, token='')\n"
        f"print(len(client.metrics({recorded['id']!r})['runs']))\n"
        "try:\n"
        f"    client.metrics_frame({recorded['id']!r})\n"
        "except PandasMissingError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=_client_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2", "DataFrames need pandas, an optional extra: pip install 'gradlab[pandas]'"]


def _client_env() -> dict[str, str]:
    """The environment of a user's client program: the client's settings refuse the server's
    GRADLAB_ variables (docs/settings.md), such as the data folder that `make test` exports."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
