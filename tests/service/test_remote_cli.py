"""The remote verbs of ``gradlab`` as a user runs them (subprocesses of the installed command)
against a real API process: tables, --json, files written, and exit codes that mean something.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gradlab.client import GradlabClient
from tests.service.conftest import StoreWorker, epoch_numbers
from tests.support.processes import VENV_BIN, free_port, wait_for


def _env(api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    return {**env, "GRADLAB_URL": api_url, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def gradlab(api_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "gradlab"), *args], env=_env(api_url),
                          capture_output=True, text=True, timeout=timeout)


def _write(path: Path, spec: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_submit_wait_follows_the_runs_and_exits_0_when_they_succeed(
    api_url: str, worker: StoreWorker, spec_factory: Callable[..., dict[str, object]],
    tmp_path: Path,
) -> None:
    spec = _write(tmp_path / "spec.yaml", spec_factory(seeds=(0, 1), epochs=2))
    waiting = subprocess.Popen([str(VENV_BIN / "gradlab"), "submit", str(spec), "--wait"],
                               env=_env(api_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    with GradlabClient(api_url, token="") as client:
        name = str(spec_factory()["name"])
        experiment = wait_for("the submitted experiment",
                              lambda: next(client.experiments(name=name), None), timeout=60)
        detail = client.experiment(experiment.id)
    for run in detail.runs:
        worker.claim(run.id)
        for epoch in range(2):
            worker.epoch(run.id, run.seed, epoch)
        worker.finish(run.id)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert f"experiment {experiment.id}: 2 runs queued" in out


def test_submit_wait_exits_1_when_a_run_fails(
    api_url: str, worker: StoreWorker, spec_factory: Callable[..., dict[str, object]],
    tmp_path: Path,
) -> None:
    spec = _write(tmp_path / "spec.yaml", spec_factory(seeds=(0,), epochs=1))
    waiting = subprocess.Popen([str(VENV_BIN / "gradlab"), "submit", str(spec), "--wait",
                                "--json"], env=_env(api_url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    with GradlabClient(api_url, token="") as client:
        name = str(spec_factory()["name"])
        experiment = wait_for("the submitted experiment",
                              lambda: next(client.experiments(name=name), None), timeout=60)
        run = client.experiment(experiment.id).runs[0]
    worker.claim(run.id)
    worker.finish(run.id, "failed", error="RuntimeError: boom")
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 1
    assert json.loads(out)["final"] == {run.id: "failed"}


def test_ls_show_gradflow_logs_cancel_for_people_and_scripts(
    api_url: str, worker: StoreWorker, spec_factory: Callable[..., dict[str, object]],
    tmp_path: Path,
) -> None:
    with GradlabClient(api_url, token="") as client:
        created = client.submit_experiment(spec_factory(seeds=(4,), epochs=3))
    run_id = created.runs[0].id
    worker.claim(run_id)
    worker.epoch(run_id, 4, 0)

    listed = gradlab(api_url, "ls", "--status", "running", "--json")
    assert listed.returncode == 0, listed.stderr
    assert created.id in [row["id"] for row in json.loads(listed.stdout)]
    table = gradlab(api_url, "ls")
    assert created.id in table.stdout and "status" in table.stdout

    shown = gradlab(api_url, "show", created.id)
    assert shown.returncode == 0 and "1/3" in shown.stdout and "running" in shown.stdout

    csv_file, png_file = tmp_path / "flow.csv", tmp_path / "flow.png"
    assert gradlab(api_url, "gradflow", created.id, "--csv", str(csv_file)).returncode == 0
    assert csv_file.read_text().startswith("experiment_id,seed,epoch,layer_index")
    assert gradlab(api_url, "gradflow", created.id, "--png", str(png_file)).returncode == 0
    assert png_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flow = gradlab(api_url, "gradflow", created.id)
    assert "entry.conv" in flow.stdout and "epoch 0" in flow.stdout

    history = gradlab(api_url, "logs", created.id, "--json")
    lines = [json.loads(line) for line in history.stdout.splitlines()]
    epoch = next(line for line in lines if line["event"] == "epoch")
    assert epoch["val_loss"] == pytest.approx(epoch_numbers(4, 0).val_loss)

    following = subprocess.Popen([str(VENV_BIN / "gradlab"), "logs", created.id, "--follow"],
                                 env=_env(api_url), stdout=subprocess.PIPE, text=True)
    assert following.stdout is not None
    first = following.stdout.readline()  # the stream is open: what comes next arrives live
    worker.epoch(run_id, 4, 1)
    cancelled = gradlab(api_url, "cancel", created.id)
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    worker.finish(run_id, "cancelled")
    rest, _ = following.communicate(timeout=60)
    out = first + rest
    assert following.returncode == 0
    assert "epoch 1" in out and "cancelled" in out and out.strip().endswith("}")


def test_report_writes_html_and_json(api_url: str, unique_name: str, tmp_path: Path) -> None:
    study = {"name": unique_name, "base": {"depth": 8, "width": 8,
                                           "hyperparameters": {"epochs": 1}},
             "grid": {"residual": [False, True]}, "seeds": [0]}
    submitted = gradlab(api_url, "submit", str(_write(tmp_path / "study.yaml", study)), "--json")
    assert submitted.returncode == 0, submitted.stderr
    study_id = json.loads(submitted.stdout)["id"]
    out = tmp_path / "report"
    assert gradlab(api_url, "report", study_id, "--out", str(out)).returncode == 0
    assert json.loads((out / "report.json").read_text())["study"] == unique_name
    assert "<html" in (out / "report.html").read_text()
    assert gradlab(api_url, "show", study_id).returncode == 0


def test_exit_codes_say_what_went_wrong(
    api_url: str, spec_factory: Callable[..., dict[str, object]], tmp_path: Path
) -> None:
    missing = gradlab(api_url, "show", "no-such-id")
    assert missing.returncode == 3
    assert missing.stderr.strip() == "error: study no-such-id not found"

    invalid = gradlab(api_url, "submit", str(_write(tmp_path / "bad.yaml",
                                                    spec_factory(depth=37))))
    assert invalid.returncode == 2
    assert "depth: depth must be 6k+2" in invalid.stderr and len(invalid.stderr.splitlines()) == 1

    unreadable = gradlab(api_url, "submit", str(tmp_path / "absent.yaml"))
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr

    down = gradlab(f"http://127.0.0.1:{free_port()}", "ls")
    assert down.returncode == 5 and "cannot reach" in down.stderr
    assert "Traceback" not in down.stderr + invalid.stderr + missing.stderr
