"""The core verbs of the `gradlab` command: model, train, bench, data download."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gradlab.cli import core_commands
from gradlab.core import pack as pack_module
from gradlab.core.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.add_typer(core_commands.commands)
    return app


runner = CliRunner()


@pytest.mark.parametrize(("args", "parameters", "layers"), [
    (["--depth", "8"], 59_716, 9),
    (["--depth", "38"], 336_196, 39),
    (["--depth", "38", "--batch-norm", "--residual"], 338_500, 75),
])
def test_model_json_prints_parameters_and_layers(app: typer.Typer, args: list[str],
                                                 parameters: int, layers: int) -> None:
    result = runner.invoke(app, ["model", *args, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["parameters"] == parameters
    assert len(info["layers"]) == layers and info["layers"][0] == "entry.conv"


def test_invalid_depth_is_one_clear_line_not_a_traceback(app: typer.Typer) -> None:
    result = runner.invoke(app, ["model", "--depth", "37"])
    assert result.exit_code == 2
    assert "depth must be 6k+2 for 3 stages; nearest: 32 or 38" in result.output
    assert "Traceback" not in result.output


def test_train_writes_result_json_and_figure_then_resumes(
        app: typer.Typer, real_data_dir: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: cli-check\ndepth: 14\nhyperparameters:\n  epochs: 2\n"
                         "  batch_size: 50\ndata:\n  train_limit: 100\n  val_limit: 50\n"
                         "  test_limit: 50\n")
    out = tmp_path / "run"
    args = ["train", "--spec", str(spec_file), "--depth", "8", "--seed", "3",
            "--data-dir", str(real_data_dir), "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "result.json").read_text())
    assert document["spec"]["name"] == "cli-check"
    assert document["spec"]["depth"] == 8  # the flag overrides the file
    assert document["seed"] == 3 and document["status"] == "succeeded"
    assert [e["epoch"] for e in document["epochs"]] == [0, 1]
    assert set(document["epochs"][0]) >= {"train_loss", "train_acc", "val_loss", "val_acc",
                                          "lr", "seconds"}
    gradflow = document["gradflow"]
    assert gradflow["layers"][0] == "entry.conv" and len(gradflow["layers"]) == 9
    for window in ("last_batch", "epoch_mean"):
        for stat in ("mean_abs", "max_abs", "l2"):
            matrix = gradflow[window][stat]
            assert len(matrix) == 2 and all(len(row) == 9 for row in matrix)
    assert set(document["test"]) >= {"loss", "acc"}
    assert document["environment"]["device"] == "cpu"
    assert (out / "gradflow.png").read_bytes()[:4] == b"\x89PNG"

    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    again = json.loads((out / "result.json").read_text())
    assert again["epochs"] == document["epochs"]  # nothing retrained: same history, same seconds
    assert again["test"] == document["test"]

    other_seed = runner.invoke(app, [*args[:-2], "--seed", "4", "--out", str(out), "--resume"])
    assert other_seed.exit_code == 2 and "different run" in other_seed.output


@pytest.mark.parametrize(("presses", "steps_run", "kept"), [(1, 4, 1), (2, 3, 0)],
                         ids=["once-at-the-epoch-end", "twice-at-once"])
def test_ctrl_c_stops_training_keeps_the_last_finished_epoch_and_resumes(
        presses: int, steps_run: int, kept: int, app: typer.Typer, real_data_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (a real SIGINT, raised here during epoch 1's first step) once: epoch 1 finishes,
    its checkpoint is written and training stops there; twice: the loop's abandon flag, so
    that step finishes, no other begins and epoch 1 is discarded. Either way the command exits
    130 without a traceback, and --resume finishes the run."""
    original = pack_module.Pack.step
    steps: list[int] = []

    def step_then_ctrl_c(pack: pack_module.Pack, batches: list[Any]) -> Any:
        steps.append(len(steps))
        if len(steps) == 3:  # 100 images in batches of 50: the 3rd step is epoch 1's first
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return original(pack, batches)

    monkeypatch.setattr(pack_module.Pack, "step", step_then_ctrl_c)
    out = tmp_path / "run"
    args = ["train", "--depth", "8", "--epochs", "3", "--batch-size", "50", "--train-limit",
            "100", "--val-limit", "50", "--test-limit", "50", "--data-dir", str(real_data_dir),
            "--device", "cpu", "--out", str(out)]
    # What the command found, to be given back: Python's own handler, or SIG_IGN where the
    # suite was started in the background by a shell without job control.
    found = signal.getsignal(signal.SIGINT)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 130, stopped.output
    assert "stopped" in stopped.output and "Traceback" not in stopped.output
    assert len(steps) == steps_run and not (out / "result.json").exists()
    assert load_checkpoint((out / "checkpoint.pt").read_bytes())["epoch"] == kept
    assert signal.getsignal(signal.SIGINT) is found  # given back

    monkeypatch.setattr(pack_module.Pack, "step", original)
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    document = json.loads((out / "result.json").read_text())
    assert document["status"] == "succeeded"
    assert [e["epoch"] for e in document["epochs"]] == [0, 1, 2]


def test_bad_spec_file_is_reported(app: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("depth: 8\nhyperparameters: {learning_rate: -1}\n")
    result = runner.invoke(app, ["train", "--spec", str(bad)])
    assert result.exit_code == 2
    assert "hyperparameters.learning_rate" in result.output
    missing = runner.invoke(app, ["train", "--spec", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read spec file" in missing.output


def test_data_download_leaves_an_existing_folder_alone(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    result = runner.invoke(app, ["data", "download", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and "already" in result.output


def test_bench_json_has_the_documented_keys(app: typer.Typer) -> None:
    result = runner.invoke(app, ["bench", "--json", "--device", "cpu", "--models", "vgg08",
                                 "--steps", "2", "--quick"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["matmul_gflops"] > 0
    assert report["matmul_backend"] in ("torch.mm", "conv1x1")
    # the top level is the precision training picks here (auto)
    assert report["matmul_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[report["precision"]]
    for key in ("step_images_per_s", "step_fraction_of_peak", "epoch_fraction_of_step",
                "gradflow_overhead"):
        assert key in report["vgg08"]
    vgg08 = report["vgg08"]
    # Rates only: that the convolutions alone outpace the whole step is what the bench
    # measures, not a rule a test can hold it to (two noisy timings on a shared machine
    # crossed in a fresh-clone run: 397 against 422 images/s).
    for key in ("step_images_per_s", "conv_images_per_s", "step_fraction_of_peak",
                "conv_fraction_of_peak"):
        assert math.isfinite(vgg08[key]) and vgg08[key] > 0, key


@pytest.mark.parametrize(("units", "timed"), [(True, ["fp32", "bf16"]), (False, ["fp32"])])
def test_bench_times_both_precisions_where_the_cpu_has_bf16_units(
        app: typer.Typer, monkeypatch: pytest.MonkeyPatch, units: bool, timed: list[str]) -> None:
    from gradlab.core import benchmark, precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: units)
    # Steered on, the units may not be here: oneDNN then emulates bf16 at a fraction of fp32's
    # speed (this test took 287 s at the bench's own sizes on an AVX2-only EPYC). What it
    # checks is which precisions are timed and how they are labelled, so the work is shrunk.
    monkeypatch.setattr(benchmark, "BATCH", 8)
    probe = benchmark.MatmulProbe
    monkeypatch.setattr(benchmark, "MatmulProbe", lambda device, seconds, dtype: probe(
        device, size=256, seconds=seconds, dtype=dtype))
    result = runner.invoke(app, ["bench", "--device", "cpu", "--models", "vgg08", "--steps",
                                 "1", "--quick"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("vgg08")]
    assert [line[1] for line in lines] == timed
    assert ("bf16 / fp32: vgg08 step" in result.stdout) is units
    # bf16 is timed against a bf16 peak (an fp32 one would overstate its fraction)
    assert ("matmul bfloat16 peak" in result.stdout) is units


@pytest.mark.parametrize(("given", "sizes"), [("16", (1, 2, 4, 8, 16)), ("6", (1, 2, 4, 6)),
                                              ("1", (1,)), ("1,3", (1, 3)), ("4,", (4,))])
def test_bench_pack_sizes(given: str, sizes: tuple[int, ...]) -> None:
    assert core_commands._pack_sizes(given) == sizes


def test_bench_pack_json_reports_aggregate_rates_and_the_ratio(app: typer.Typer) -> None:
    result = runner.invoke(app, ["bench", "--json", "--device", "cpu", "--models", "vgg08",
                                 "--steps", "1", "--quick", "--pack", "1,2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["cuda_graphs"] is False  # CPU: nothing to capture
    rows = report["vgg08"]
    assert [r["pack"] for r in rows] == [1, 2]
    for row in rows:
        assert row["images_per_s"] == pytest.approx(
            row["pack"] * report["batch_size_per_run"] / row["fused_step_seconds"])
        assert row["ratio_to_separate"] > 0
    bad = runner.invoke(app, ["bench", "--device", "cpu", "--pack", "0"])
    assert bad.exit_code == 2 and "1..64" in bad.output
