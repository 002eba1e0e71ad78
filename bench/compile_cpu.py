"""Does ``torch.compile`` speed up the CPU training step? (It is used only on CUDA.)

    .venv/bin/python bench/compile_cpu.py

For VGG08 and VGG38 (batch 100, fp32, channels_last): the eager step and the compiled step,
each the best of 4 timings after 3 warm-up steps (the compiled warm-up includes compilation).
Prints the figures; asserts nothing.
"""

from __future__ import annotations

import time

from gradlab.core.allocator import keep_freed_memory
from gradlab.core.benchmark import synthetic_step


def step_rate(depth: int, compiled: bool) -> tuple[float, float]:
    """(images/s, warm-up seconds) of one model's training step."""
    step = synthetic_step(depth, compiled=compiled)
    start = time.perf_counter()
    for _ in range(3):
        step()
    warm_up = time.perf_counter() - start
    steps = 40 if depth == 8 else 10
    best = float("inf")
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - start) / steps)
    return 100 / best, warm_up


def main() -> None:
    keep_freed_memory()
    print(f"{'model':6}  {'eager img/s':>11}  {'compiled img/s':>14}  {'compile warm-up':>15}")
    for depth in (8, 38):
        eager, _ = step_rate(depth, compiled=False)
        compiled, warm_up = step_rate(depth, compiled=True)
        print(f"vgg{depth:02d}   {eager:11.0f}  {compiled:14.0f}  {warm_up:14.1f}s")


if __name__ == "__main__":
    main()
