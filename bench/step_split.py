"""Where a CPU training step's time goes: forward, backward and optimiser against the same
model's convolutions alone (forward and backward, each timed on its own at its real shape),
then the step's other operators by their own time per step (torch profiler), the work that
separates the step from the convolutions-alone ceiling.

    .venv/bin/python bench/step_split.py

Batch 100, fp32, channels_last, gradlab's model (fused conv + leaky ReLU, tuned malloc).
Medians over the steps after 5 warm-up steps. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import time

# Before torch loads: the CPU-only profiler otherwise logs a "no GPU" error line.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from gradlab.core.allocator import keep_freed_memory
from gradlab.core.architectures import build_model
from gradlab.core.benchmark import _best_time, _conv_shapes, synthetic_step
from gradlab.science.spec import ExperimentSpec

CPU = torch.device("cpu")


def step_parts(depth: int, steps: int) -> dict[str, float]:
    """Median milliseconds of forward (with the loss), backward and optimiser step."""
    step = synthetic_step(depth)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for i in range(5 + steps):
        t0 = time.perf_counter()
        loss = step.loss()
        t1 = time.perf_counter()
        step.backward(loss)
        t2 = time.perf_counter()
        step.optimizer.step()
        t3 = time.perf_counter()
        if i >= 5:
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[key].append(seconds)
    return {key: 1e3 * statistics.median(values) for key, values in parts.items()}


def conv_parts(depth: int) -> dict[str, float]:
    """Milliseconds of the model's convolutions alone: forward, and backward (data + weight)."""
    totals = {"forward": 0.0, "backward": 0.0}
    for conv, shape in _conv_shapes(build_model(ExperimentSpec(depth=depth))):
        forward, backward = _one_conv(conv, shape)
        totals["forward"] += forward
        totals["backward"] += backward
    return {key: 1e3 * value for key, value in totals.items()}


def _one_conv(conv: torch.nn.Conv2d, shape: torch.Size) -> tuple[float, float]:
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(conv.weight.shape)
    bias = None if conv.bias is None else torch.randn(conv.bias.shape)
    grad = torch.randn_like(F.conv2d(x, weight, bias, 1, 1))
    bias_sizes = None if bias is None else [weight.shape[0]]
    mask = [shape[1] != 3, True, bias is not None]  # the first layer's input needs no grad

    def forward() -> None:
        F.conv2d(x, weight, bias, 1, 1)

    def backward() -> None:
        torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, [1, 1], [1, 1], [1, 1],
                                            False, [0, 0], 1, mask)

    return _best_time(forward, CPU, 5), _best_time(backward, CPU, 5)


# Operators that are convolutions (or wrap them); everything else is the step's other work.
_CONVOLUTION_OPS = ("convolution", "_ConvLeakyReLU", "evaluate_function")


def other_ops(depth: int, steps: int = 5, top: int = 6) -> list[tuple[str, float]]:
    """The ``top`` non-convolution operators of a warm step by self time, ms per step."""
    step = synthetic_step(depth)
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    rows = [(event.key, event.self_cpu_time_total / 1e3 / steps)
            for event in profiler.key_averages()
            if not any(name in event.key for name in _CONVOLUTION_OPS)]
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> None:
    keep_freed_memory()
    print(f"{'model':6}  {'part':9}  {'step ms':>8}  {'convs alone ms':>14}")
    for depth, steps in ((8, 60), (38, 20)):
        step, convs = step_parts(depth, steps), conv_parts(depth)
        for part, ms in step.items():
            alone = f"{convs[part]:14.2f}" if part in convs else f"{'':14}"
            print(f"vgg{depth:02d}   {part:9}  {ms:8.2f}  {alone}")
    for depth in (8, 38):
        ops = ", ".join(f"{name} {ms:.2f}" for name, ms in other_ops(depth))
        print(f"vgg{depth:02d} other operators, ms per step: {ops}")


if __name__ == "__main__":
    main()
