"""scripts/gpu_check.sh, the one command a lent GPU machine runs, run here with DEVICE=cpu: the
data check on the real CIFAR-100 and on a damaged copy, the data arriving in per-call pieces,
and a dry run of measure, train-final and train-rest on a tiny study."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripts.script_modules import REPO, load_script
from tests.support.processes import VENV_BIN, real_data_dir

SCRIPT = REPO / "scripts" / "gpu_check.sh"
transfer = load_script("gpu_transfer")
results_script = load_script("gpu_results")


@pytest.fixture(scope="module")
def cifar() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real CIFAR-100 not available (set GRADLAB_DATA_DIR)")
    return found


def gpu_check(tmp_path: Path, *modes: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The script as a call runs it, with DEVICE=cpu and every folder it writes under tmp; its
    output (stdout and stderr together, as its log has them) in ``stdout``."""
    settings = {**os.environ, "DEVICE": "cpu", "PYTHON": str(VENV_BIN / "python"),
                "OUT": str(tmp_path / "out"), "TRANSFER": str(tmp_path / "transfer"),
                "SITE": str(tmp_path / "site"), "DATA_DIR": str(tmp_path / "cifar"),
                "STUDY_OUT": str(tmp_path / "study"),
                "MEASURE_RESULTS": str(tmp_path / "measure"), **env}
    return subprocess.run(["bash", str(SCRIPT), *modes], env=settings, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


def test_the_data_check_passes_on_the_real_cifar100(cifar: Path, tmp_path: Path) -> None:
    done = gpu_check(tmp_path, "data", DATA_DIR=str(cifar))
    assert done.returncode == 0, done.stdout
    for name in ("train.npz", "test.npz", "meta.json"):
        assert f"{name}: OK" in done.stdout


def test_the_data_check_fails_on_a_damaged_copy_naming_the_file(
    cifar: Path, tmp_path: Path,
) -> None:
    copy = tmp_path / "damaged"
    copy.mkdir()
    for name in ("train.npz", "meta.json", "SHA256SUMS"):
        (copy / name).symlink_to(cifar / name)
    blob = bytearray((cifar / "test.npz").read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one image
    (copy / "test.npz").write_bytes(bytes(blob))
    done = gpu_check(tmp_path, "data", DATA_DIR=str(copy))
    assert done.returncode != 0
    assert "test.npz: FAILED" in done.stdout and "train.npz: OK" in done.stdout
    assert "the data's SHA-256 differs" in done.stdout


def _small_data(folder: Path) -> Path:
    folder.mkdir()
    blob = os.urandom(200_000)
    (folder / "train.npz").write_bytes(blob)
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(blob).hexdigest()}  train.npz\n")
    return folder


def test_data_in_pieces_is_checked_only_once_every_call_has_arrived(tmp_path: Path) -> None:
    packed = tmp_path / "packed"
    manifest = transfer.pack(_small_data(tmp_path / "source"), None, None, packed,
                             call_mib=0.1)
    assert manifest.calls == 2
    there = tmp_path / "transfer"
    there.mkdir()
    shutil.copytree(packed / "call-1", there / "call-1")
    first = gpu_check(tmp_path, "receive")  # a call that carries a piece: nothing to check yet
    assert first.returncode == 0, first.stdout
    assert f"still to carry: {there}/call-2" in first.stdout
    early = gpu_check(tmp_path, "data")
    assert early.returncode == 3 and "the data is not complete here yet" in early.stdout
    shutil.copytree(packed / "call-2", there / "call-2")
    last = gpu_check(tmp_path, "data")
    assert last.returncode == 0, last.stdout
    assert f"data extracted into {tmp_path / 'cifar'}" in last.stdout
    assert "train.npz: OK" in last.stdout


TINY_STUDY = """\
name: gpu-dry-run
base:
  name: vgg
  width: 8
  hyperparameters: {batch_size: 50, epochs: 2}
  data: {dataset: cifar100, train_limit: 200, val_limit: 50, test_limit: 50}
  seeds: [0]
experiments:
  - {name: final, depth: 8, seeds: [0, 1]}
  - {name: rest, depth: 8, batch_norm: true}
"""


def _study_run_takes_a_time_limit_and_cells() -> bool:
    helped = subprocess.run([str(VENV_BIN / "gradlab"), "study", "run", "--help"],
                            capture_output=True, text=True, timeout=120)
    return "--time-limit" in helped.stdout and "--cell" in helped.stdout


def _statuses(report: Path) -> dict[tuple[str, int], str]:
    rows = json.loads(report.read_text())["completion"]
    return {(r["cell"], r["seed"]): r["status"] for r in rows}


@pytest.mark.slow
def test_a_dry_run_measures_then_trains_the_final_cell_first_then_the_rest(
    cifar: Path, tmp_path: Path,
) -> None:
    if not _study_run_takes_a_time_limit_and_cells():
        pytest.skip("needs `gradlab study run --time-limit/--cell` (issue 19 section 1)")
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    env = {"DATA_DIR": str(cifar), "STUDY": str(study), "FINAL_CELL": "final",
           "MEASURE_ARGS": "--packs 1 --processes 1 --quick --window 1 --decide-on vgg08",
           "BUDGET": "800"}
    first = gpu_check(tmp_path, "data", "measure", "vgg08", "train-final",
                      OUT=str(tmp_path / "call-1"), **env)
    assert first.returncode == 0, first.stdout[-6000:]
    out = tmp_path / "call-1"
    sharing = json.loads((out / "sharing.json").read_text())
    assert sharing["decision"]["winner"] in ("packs", "processes")
    assert "Setting: GRADLAB_GPU_SHARING=" in (out / "sharing.md").read_text()
    assert _statuses(out / "report.json") == {
        ("final", 0): "succeeded", ("final", 1): "succeeded", ("rest", 0): "queued"}
    collected = json.loads((out / "collect.json").read_text())
    assert collected["state_parts"] and "gradlab.db" in collected["sizes"]
    assert len(list(out.iterdir())) <= transfer.RETURN_FILES  # what a call brings back
    second = gpu_check(tmp_path, "train-rest", OUT=str(tmp_path / "call-2"), **env)
    assert second.returncode == 0, second.stdout[-6000:]
    assert set(_statuses(tmp_path / "call-2" / "report.json").values()) == {"succeeded"}
    # What the calls brought back, as docs/results/full-scale/ gets it.
    results = tmp_path / "results"
    assert results_script.main([str(out), str(tmp_path / "call-2"), "--out", str(results)]) == 0
    text = (results / "README.md").read_text()
    assert "GPU: no GPU (DEVICE=cpu)" in text
    assert re.search(r"\| call-1 \| data measure train-final \| \d+ \| 800 \|", text)
    assert re.search(r"\| final \| 0\.\d{4} \+- 0\.\d{4} \(n=2\) \| 2 \| seed 0: 2, seed 1: 2 \|",
                     text)
    assert "Winner on vgg08" in text
    assert (results / "report.json").is_file() and any((results / "figures").glob("*.png"))
