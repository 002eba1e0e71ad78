"""glibc tuning: once training is warm, a step reuses freed memory instead of faulting pages in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# Ten warm-up training steps of VGG08 (batch 100), then the minor page faults per step.
PROBE = """
import resource, sys
from gradlab.core.allocator import keep_freed_memory
from gradlab.core.benchmark import synthetic_step
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
step = synthetic_step(8)
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _page_faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=300)
    return float(out.stdout.split()[-1])


def test_warm_training_steps_fault_no_activation_pages_in() -> None:
    pages_per_activation = 100 * 32 * 32 * 32 * 4 // 4096  # one 32x32 activation: 3,200 pages
    # The control: untuned, glibc hands freed activations back and faults them in again on
    # every step (6,304 to 22,425 pages per step seen here, two to seven activations).
    default = _page_faults_per_step("default")
    tuned = _page_faults_per_step("tuned")
    assert default > pages_per_activation / 2
    # Tuned, a warm step faults in a quarter of an activation at most (0 to 320 pages seen).
    assert tuned < pages_per_activation / 4
