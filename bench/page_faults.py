"""What the glibc tuning in ``core/allocator.py`` buys: page faults and step rate.

    .venv/bin/python bench/page_faults.py [--rounds 3]

For VGG08 and VGG38 (batch 100, CPU), each in a fresh process with and without
``keep_freed_memory()``, alternating: ten warm-up training steps, then minor page faults per
step and images/s over the next steps. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import resource, sys, time
from gradlab.core.allocator import keep_freed_memory
from gradlab.core.benchmark import synthetic_step
depth, tuned = int(sys.argv[1]), sys.argv[2] == "tuned"
if tuned:
    keep_freed_memory()
step = synthetic_step(depth)
for _ in range(10):
    step()
steps = 40 if depth == 8 else 10
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps, 100 * steps / seconds)
"""


def _measure(depth: int, mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(depth), mode], capture_output=True,
                         text=True, check=True, cwd=REPO)
    faults, rate = out.stdout.split()
    return float(faults), float(rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':6}  {'malloc':8}  {'faults/step':>11}  {'img/s (median)':>14}  "
          f"{'img/s (best)':>12}")
    for depth in (8, 38):
        seen: dict[str, list[tuple[float, float]]] = {"default": [], "tuned": []}
        for i in range(args.rounds):
            for mode in ("default", "tuned") if i % 2 == 0 else ("tuned", "default"):
                seen[mode].append(_measure(depth, mode))
        for mode, rows in seen.items():
            rates = [rate for _, rate in rows]
            print(f"vgg{depth:02d}   {mode:8}  {statistics.median(f for f, _ in rows):11.0f}  "
                  f"{statistics.median(rates):14.0f}  {max(rates):12.0f}")


if __name__ == "__main__":
    main()
