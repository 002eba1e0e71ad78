"""scripts/find_scale.py, the scale search of issue 15: a tiny study trained for real at two
candidate sizes, diagnosed with the unchanged diagnostics, saved, and its weight-decay figure
drawn again from the saved file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/find_scale.py"
TINY_STUDY = """
name: tiny
base:
  name: vgg
  depth: 8
  width: 8
  hyperparameters: {epochs: 10, batch_size: 100}
  data: {dataset: cifar100}
  seeds: [0]
experiments:
  - {name: plain}
  - {name: plain-wd, hyperparameters: {weight_decay: 1.0e-2}, seeds: [0, 1]}
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_each_candidate_is_trained_diagnosed_saved_and_its_figure_drawn_again(
    data_dir: Path, tmp_path: Path,
) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    out = tmp_path / "sweep.jsonl"
    done = _run(str(study), "--candidates", "200x3,100x2:constant", "--data-dir", str(data_dir),
                "--jobs", "2", "--out", str(out), "--figures", str(tmp_path / "live"))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["candidate"] for r in rows) == ["100x2-constant", "200x3"]
    for row in rows:
        epochs = 3 if row["candidate"] == "200x3" else 2
        assert sorted(row["runs"]) == ["plain-wd/0", "plain-wd/1", "plain/0"]
        assert all(len(r["epochs"]) == epochs for r in row["runs"].values())
        assert set(row["findings"]) == {"vanishing_gradients", "not_training", "degradation",
                                        "overfitting", "fix"}
        assert f"== {row['candidate']}: " in done.stdout
    constant = next(r for r in rows if r["candidate"] == "100x2-constant")
    assert {e["lr"] for r in constant["runs"].values() for e in r["epochs"]} == {1e-3}
    assert (tmp_path / "live/200x3-weight-decay-plain.png").stat().st_size > 10_000

    again = _run(str(study), "--from-saved", str(out), "--figures", str(tmp_path / "saved"))
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "100x2-constant-weight-decay-plain.png", "200x3-weight-decay-plain.png"]


def test_a_candidate_that_is_not_images_x_epochs_is_refused_by_name(tmp_path: Path) -> None:
    done = _run(str(tmp_path / "none.yaml"), "--candidates", "200x3,lots")
    assert done.returncode != 0
    assert "'lots' is not IMAGESxEPOCHS" in done.stderr
