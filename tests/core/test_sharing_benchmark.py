"""`gradlab bench --processes N`: N real processes, one run each, over one common window."""

from __future__ import annotations

import json
import subprocess

import pytest

from gradlab.core.sharing_benchmark import SharingError, bench_processes, steps_at
from tests.support.processes import VENV_BIN


def test_steps_in_the_window_are_read_between_the_records_around_its_ends() -> None:
    records = [(10.0, 0), (11.0, 4), (13.0, 12)]
    assert steps_at(records, 10.5) == 2.0
    assert steps_at(records, 12.0) == 8.0
    assert steps_at(records, 13.0) == 12.0
    with pytest.raises(SharingError, match="no records around 14.000"):
        steps_at(records, 14.0)


def test_processes_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="processes must be at least 1, got 0"):
        bench_processes("vgg08", 0, "cpu")


def test_two_processes_share_the_cpu_and_their_rates_add_up() -> None:
    # The mode end to end as the GPU script runs it: the command, two spawned children that
    # each train one VGG08 run, a one-second common window.
    out = subprocess.run(
        [str(VENV_BIN / "gradlab"), "bench", "--json", "--device", "cpu", "--models", "vgg08",
         "--processes", "2,", "--window", "1"],
        capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout)
    (row,) = report["vgg08"]
    assert row["processes"] == 2 and row["window_seconds"] == 1.0
    assert len(row["per_process_images_per_s"]) == len(row["steps_in_window"]) == 2
    assert all(rate > 0 for rate in row["per_process_images_per_s"])
    assert all(steps > 0 for steps in row["steps_in_window"])
    assert row["images_per_s"] == pytest.approx(sum(row["per_process_images_per_s"]))
    # each process's rate is its steps in the window (rounded to 0.1) x 100 images / 1 s
    for rate, steps in zip(row["per_process_images_per_s"], row["steps_in_window"],
                           strict=True):
        assert rate == pytest.approx(steps * 100, abs=0.05 * 100)
    assert report["environment"]["device"] == "cpu"
    assert report["cuda_graphs"] is False
