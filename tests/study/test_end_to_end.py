"""End to end on the real CIFAR-100 slice: a small study through the service (``gradlab serve``:
API + local worker + SQLite, over HTTP) and through ``gradlab study run`` (resumable)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import VENV_BIN, ServiceProcess, free_port, wait_for, wait_http_ok

pytestmark = [pytest.mark.slow]

STUDY = {
    "name": "e2e-study",
    "base": {
        "name": "e2e",
        "width": 8,
        "hyperparameters": {"epochs": 2},
        "data": {"train_limit": 200, "val_limit": 100, "test_limit": 100},
    },
    "grid": {"depth": [8, 14], "batch_norm": [False, True]},
    "name_template": "e2e{depth:02d}{batch_norm:-bn}",
    "seeds": [0],
}
KINDS = {
    "vanishing_gradients",
    "exploding_gradients",
    "not_training",
    "degradation",
    "overfitting",
    "fix",
}


def _study_run_argv(study_file: Path, out: Path) -> list[str]:
    """``gradlab study run`` as a real process (through its Typer function, so the test does
    not depend on the console script being on PATH)."""
    return [
        str(VENV_BIN / "python"),
        "-c",
        "import typer; from gradlab.cli.study_commands import run_command; "
        "typer.run(run_command)",
        str(study_file),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env.update(GRADLAB_DATA_DIR=str(data_dir), GRADLAB_DEVICE="cpu", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def serve(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    port = free_port()
    process = ServiceProcess(
        "serve",
        [
            str(VENV_BIN / "python"),
            "-c",
            "import typer; from gradlab.cli.service_commands import serve_command; "
            "typer.run(serve_command)",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "gradlab.db"),
        ],
        _env(data_dir),
        tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", timeout=90, service=process)
        yield url
    finally:
        process.stop()


def _check_findings(findings: list[dict]) -> None:
    for finding in findings:
        assert finding["kind"] in KINDS
        assert finding["sentence"] and isinstance(finding["evidence"], dict)
        assert all(
            set(e) == {"name", "depth", "batch_norm", "residual"} for e in finding["experiments"]
        )


def test_a_study_through_the_service(serve: str) -> None:
    with httpx.Client(base_url=serve, timeout=60) as client:
        created = client.post("/studies", json=STUDY)
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]

        def finished() -> dict | None:
            matrix = client.get(f"/studies/{study_id}").json()
            return matrix if matrix["runs_finished"] == matrix["runs_planned"] else None

        matrix = wait_for("the study to finish", finished, timeout=420, interval=2)
        statuses = {s["status"] for c in matrix["cells"] for s in c["seeds"]}
        assert statuses == {"succeeded"}
        assert all(s["epochs_done"] == 2 for c in matrix["cells"] for s in c["seeds"])

        report = client.get(f"/studies/{study_id}/report").json()
        assert report["complete"] is True
        rows = {r["name"]: r for r in report["table"]}
        assert rows["e2e08"]["train_acc"]["n"] == 1 and rows["e2e14-bn"]["test_acc"]["n"] == 1
        _check_findings(report["findings"])
        page = client.get(f"/studies/{study_id}/report", params={"format": "html"}).text
        assert "data:image/png;base64," in page and "Partial results" not in page

        again = client.post("/studies", json=STUDY).json()
        assert again["id"] == study_id and again["runs_queued"] == 0


def test_study_run_command_writes_the_report_and_resumes(tmp_path: Path, data_dir: Path) -> None:
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps({**STUDY, "name": "e2e-cli"}))
    out = tmp_path / "out"
    argv = _study_run_argv(study_file, out)
    first = subprocess.run(argv, env=_env(data_dir), capture_output=True, text=True, timeout=420)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 to run" in first.stdout
    assert "Findings" in first.stdout and str(out / "report.html") in first.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and report["runs_finished"] == 4
    _check_findings(report["findings"])
    figures = {f["name"] for f in report["figures"]}
    assert {"curves", "gradflow-e2e14", "heatmap-e2e14-bn"} <= figures
    assert (out / "figures" / "curves.png").stat().st_size > 0

    # (a generous bound: on a loaded 2-core machine these 30 epochs and the report take minutes)
    second = subprocess.run(argv, env=_env(data_dir), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4 already succeeded, 0 to run" in second.stdout


def test_study_run_command_refuses_a_bad_file_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ngrid: {depth: [37]}\n")
    argv = [
        str(VENV_BIN / "python"),
        "-c",
        "import typer; from gradlab.cli.study_commands import run_command; "
        "typer.run(run_command)",
        str(bad),
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "depth must be 6k+2 for 3 stages; nearest: 32 or 38" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    missing = subprocess.run(
        [*argv[:3], str(tmp_path / "nope.yaml"), *argv[4:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "cannot read study file" in missing.stdout


def test_study_run_killed_mid_run_resumes_from_its_checkpoint(
    tmp_path: Path, data_dir: Path
) -> None:
    import signal
    import sqlite3

    study = {**STUDY, "name": "e2e-kill", "grid": {"depth": [8], "batch_norm": [False]}}
    # The kill comes as soon as the first epoch is seen (polled every 0.02 s, far less than
    # the five epochs left take: each trains, evaluates and writes a checkpoint), so it lands
    # mid-run however fast the machine; the resume then trains the rest, which is kept short.
    epochs = 6
    study["base"] = {
        **STUDY["base"],  # type: ignore[dict-item]
        "width": 16,
        "hyperparameters": {"epochs": epochs},
        "data": {"train_limit": 500, "val_limit": 100, "test_limit": 100},
    }
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(study))
    out = tmp_path / "out"
    argv = _study_run_argv(study_file, out)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(argv, env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT)

    def epochs_done() -> int | None:
        db = out / "gradlab.db"
        if not db.exists():
            return None
        try:
            with sqlite3.connect(db) as conn:
                row = conn.execute("SELECT max(epochs_done) FROM runs").fetchone()
        except sqlite3.OperationalError:  # the file exists before the migration made the table
            return None
        return row[0] if row and row[0] and row[0] >= 1 else None

    try:
        wait_for("the first epoch", epochs_done, timeout=300, interval=0.02)
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to hand the run back
        first.wait(30)
        log.close()
    with sqlite3.connect(out / "gradlab.db") as conn:
        done_before = conn.execute("SELECT epochs_done FROM runs").fetchone()[0]
    assert done_before < epochs, "the run finished before it could be killed; make it longer"

    second = subprocess.run(argv, env=_env(data_dir), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 to run" in second.stdout
    with sqlite3.connect(out / "gradlab.db") as conn:
        status, attempt, done = conn.execute(
            "SELECT status, attempt, epochs_done FROM runs"
        ).fetchone()
        recorded = [e for (e,) in conn.execute("SELECT epoch FROM epoch_metrics ORDER BY epoch")]
        environment = json.loads(conn.execute("SELECT environment FROM runs").fetchone()[0])
    assert (status, attempt, done) == ("succeeded", 2, epochs)
    assert recorded == list(range(epochs))
    assert environment["resumed_from_epoch"] == done_before - 1  # from its last checkpoint
