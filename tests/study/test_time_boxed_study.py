"""`gradlab study run --time-limit/--cell` and its movable folder, on a slice of the real
CIFAR-100 (CPU): a time limit stops every run at an epoch boundary with its checkpoint
written and the same command resumes; the folder moved (and copied) to another path resumes
and finishes; finished runs' checkpoints are deleted; Ctrl-C stops at a boundary.

The time-limit test runs the command in this process with a clock of its own that advances
10 s per epoch trained: what fits is then decided by the epochs, never by how fast this
machine trains.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gradlab.cli import study_commands
from gradlab.worker.attempt import Attempt
from tests.support.processes import VENV_BIN, wait_for

pytestmark = [pytest.mark.slow]

EPOCHS = 4
STUDY = {
    "name": "time-boxed",
    "base": {"name": "tb", "depth": 8, "width": 8, "hyperparameters": {"epochs": EPOCHS},
             "data": {"train_limit": 200, "val_limit": 100, "test_limit": 100}},
    "grid": {"batch_norm": [False, True]},
    "name_template": "tb{batch_norm:-bn}",
    "seeds": [0],
}
SECONDS_PER_EPOCH = 10.0


class EpochClock:
    """Time that passes 10 s per epoch trained: it ticks as each epoch ends, before the
    worker's epoch writer decides anything."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> EpochClock:
    epoch_clock = EpochClock()
    writer = Attempt.epoch_writer

    def ticking_writer(attempt: Attempt, boundary: Any) -> Any:
        write = writer(attempt, boundary)

        def on_epoch_end(*args: Any) -> Any:
            epoch_clock.now += SECONDS_PER_EPOCH
            return write(*args)

        return on_epoch_end

    monkeypatch.setattr(Attempt, "epoch_writer", ticking_writer)
    monkeypatch.setattr(study_commands, "clock", epoch_clock)
    return epoch_clock


def _study_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps({**STUDY, **changes}))
    return path


def _gradlab() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(study_commands.commands)
    app.callback()(lambda: None)  # a group: `study` is its subcommand, as in `gradlab`
    return app


def _run(study_file: Path, out: Path, data_dir: Path, *extra: str) -> tuple[int, str]:
    """``gradlab study run`` in this process (its clock the test's)."""
    result = CliRunner().invoke(_gradlab(), [
        "study", "run", str(study_file), "--out", str(out), "--scale", "full", "--device", "cpu",
        "--data-dir", str(data_dir), *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _runs(out: Path) -> dict[str, tuple[str, int, int | None, str | None]]:
    """Per cell: (status, epochs done, checkpoint epoch, checkpoint key)."""
    with sqlite3.connect(out / "gradlab.db") as conn:
        rows = conn.execute(
            "SELECT e.name, r.status, r.epochs_done, c.epoch, c.key FROM runs r "
            "JOIN experiments e ON e.id = r.experiment_id "
            "LEFT JOIN checkpoints c ON c.run_id = r.id").fetchall()
    return {name: (status, done, epoch, key) for name, status, done, epoch, key in rows}


def _metrics(out: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(out / "gradlab.db") as conn:
        return conn.execute(
            "SELECT e.name, m.epoch, m.train_loss, m.val_loss, m.val_acc FROM epoch_metrics m "
            "JOIN runs r ON r.id = m.run_id JOIN experiments e ON e.id = r.experiment_id "
            "ORDER BY e.name, m.epoch").fetchall()


def _checkpoint_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "checkpoints").rglob("*.ckpt"))


@pytest.mark.usefixtures("clock")
def test_a_time_limit_stops_at_an_epoch_boundary_and_the_moved_or_copied_folder_resumes(
    tmp_path: Path, data_dir: Path
) -> None:
    study_file = _study_file(tmp_path)
    out = tmp_path / "first-machine" / "study"
    # 85 s: 30 kept for the report, 55 to train. The first run trains its 4 epochs (40 s);
    # the second's first epoch ends at 50, and its next would end at 60 > 55: it stops at
    # that boundary (before the deadline itself, which would abandon an epoch).
    limit = ["--time-limit", "85"]
    code, said = _run(study_file, out, data_dir, *limit)
    assert code == 0, said
    first = _runs(out)
    finished = [c for c, (status, *_) in first.items() if status == "succeeded"]
    assert len(finished) == 1, first
    (stopped,) = set(first) - set(finished)
    status, done, checkpoint_epoch, key = first[stopped]
    assert (status, done, checkpoint_epoch) == ("queued", 1, 0)  # at a boundary, checkpointed
    assert key is not None and not key.startswith("/")  # relative to OUT/checkpoints
    assert first[finished[0]][2:] == (None, None)  # a finished run's checkpoint is deleted
    assert _checkpoint_files(out) == [f"checkpoints/{key}"]
    assert f"{stopped}: its next epoch (about 10 s) did not fit in the time left" in said
    assert f"Left: 1 run, 3 epochs ({stopped} 1 run, 3 epochs)" in said
    assert f"Resume with: gradlab study run {study_file} --scale full --out {out}" in said
    assert json.loads((out / "report.json").read_text())["complete"] is False

    moved = tmp_path / "second-machine" / "elsewhere"
    moved.parent.mkdir()
    shutil.move(out, moved)
    copied = tmp_path / "third-machine" / "copy"
    shutil.copytree(moved, copied)
    for folder in (moved, copied):
        code, said = _run(study_file, folder, data_dir, *limit)
        assert code == 0, said
        assert "0 already succeeded" not in said and "1 to run" in said
        assert {c: r[:3] for c, r in _runs(folder).items()} == {
            c: ("succeeded", EPOCHS, None) for c in first}
        assert _checkpoint_files(folder) == []  # every run finished: no checkpoint kept
        assert "Left:" not in said and "Resume with" not in said
        assert json.loads((folder / "report.json").read_text())["complete"] is True
    # The copy resumed from the same checkpoint as the moved folder: the same numbers.
    assert _metrics(moved) == _metrics(copied)
    assert [m[1] for m in _metrics(moved) if m[0] == stopped] == list(range(EPOCHS))


def test_cell_trains_only_the_named_cells_and_the_report_covers_the_whole_study(
    tmp_path: Path, data_dir: Path
) -> None:
    study_file = _study_file(tmp_path, base={**STUDY["base"],  # type: ignore[dict-item]
                                             "hyperparameters": {"epochs": 2}})
    out = tmp_path / "out"
    code, said = _run(study_file, out, data_dir, "--cell", "tb-bn")
    assert code == 0, said
    assert "1 to run in 1 chosen cell(s)" in said
    assert {c: r[:2] for c, r in _runs(out).items()} == {"tb-bn": ("succeeded", 2),
                                                          "tb": ("queued", 0)}
    assert "Not trained this time (not chosen with --cell): 1 run, 2 epochs (tb 1 run, " \
           "2 epochs)" in said
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and report["runs_finished"] == 1
    assert {row["name"] for row in report["table"]} == {"tb", "tb-bn"}

    code, said = _run(study_file, out, data_dir, "--cell", "tb-bn", "--cell", "vgg99")
    assert code == 2
    assert "--cell vgg99: no such cell in time-boxed; its cells are tb, tb-bn" in said


def test_ctrl_c_stops_the_study_at_the_end_of_the_epoch_in_progress(
    tmp_path: Path, data_dir: Path
) -> None:
    # Long enough (30 epochs) that the Ctrl-C always lands mid-run.
    epochs = 30
    study_file = _study_file(tmp_path, grid={"batch_norm": [False]}, base={
        **STUDY["base"],  # type: ignore[dict-item]
        "hyperparameters": {"epochs": epochs},
        "data": {"train_limit": 2000, "val_limit": 100, "test_limit": 100}})
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env.update(GRADLAB_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    argv = [str(VENV_BIN / "python"), "-c", "import typer; from gradlab.cli.study_commands "
            "import run_command; typer.run(run_command)", str(study_file), "--out", str(out),
            "--device", "cpu"]
    log = tmp_path / "study.log"
    with log.open("w") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for("the first epoch", lambda: _first_epoch_done(out), timeout=300,
                     interval=0.2)
            process.send_signal(signal.SIGINT)
            assert process.wait(300) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
    said = log.read_text()
    assert "Stopped (Ctrl-C)" in said and "Resume with: gradlab study run" in said
    assert "Traceback" not in said
    ((status, done, checkpoint_epoch, _),) = _runs(out).values()
    assert status == "queued" and 1 <= done < epochs
    assert checkpoint_epoch == done - 1  # the epoch in progress finished and was kept


def _first_epoch_done(out: Path) -> bool | None:
    database = out / "gradlab.db"
    if not database.exists():
        return None
    try:
        with sqlite3.connect(database) as conn:
            (done,) = conn.execute("SELECT max(epochs_done) FROM runs").fetchone()
    except sqlite3.OperationalError:  # the file exists before the migration made the table
        return None
    return True if done and done >= 1 else None
