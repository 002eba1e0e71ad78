"""The cluster simulation runs end to end on a tiny point and prints its figures as JSON.
A smoke test of the script only: its figures are measurements, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.processes import REPO

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_one_point_prints_the_figures_the_scale_report_needs() -> None:
    done = subprocess.run(
        [sys.executable, "bench/cluster_sim.py", "--runs", "4", "--epoch-seconds", "0.5",
         "--readers", "2", "--read-interval", "0.2", "--duration", "2", "--workers", "1",
         "--checkpoint-mb", "0.1", "--checkpoint-seconds", "0", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout)
    for key in ("epoch_writes_per_s", "epoch_write_p95_ms", "gradflow_read_p95_ms",
                "db_backends_cpu_cores", "wal_bytes_per_s", "growth_per_1000_runs_gb",
                "server_connections_max"):
        assert key in figures
    assert figures["epoch_writes"] > 0 and figures["write_errors"] == 0
    assert figures["checkpoints_written"] > 0 and figures["processes_reported"] == 2
