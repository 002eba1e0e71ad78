"""`gradlab bench`: how close training runs to what this machine can do.

Measured in one process, on the training device:

- ``matmul_gflops``: fp32 square matmul rate, the machine's practical peak;
- per model (VGG08, VGG38), batch 100:
  - ``step_images_per_s``: a bare training step (channels_last forward, cross-entropy,
    backward, Adam step; nothing else), and ``step_fraction_of_peak`` = its FLOP rate
    (3 x forward MFLOP per image) over the matmul peak;
  - ``epoch_images_per_s`` / ``epoch_fraction_of_step``: gradlab's own epoch (batches gathered
    and augmented on the device, gradient-flow capture, loss buffers, divergence checks, and a
    validation pass in the seed's 2,500 : 47,500 proportion) over the bare step rate;
  - ``gradflow_overhead``: the extra time of gradient-flow capture per step, as a fraction of
    the step without it.

Rates are the best of several repeats (the least disturbed by other processes); nothing here
asserts on time. Figures go to the terminal and, with ``--json``, to stdout as JSON.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from gradlab.core.architectures import build_model
from gradlab.core.augment import EvalBatches, TrainBatches
from gradlab.core.environment import describe_environment, resolve_device
from gradlab.core.gradflow import GradFlowRecorder
from gradlab.core.optimization import make_optimizer
from gradlab.core.spec import ExperimentSpec
from gradlab.core.training_loop import Engine, evaluate, train_epoch

# Forward MFLOP per 32x32 image (derived in the seed notes); training is ~3x forward.
FORWARD_MFLOP = {"vgg08": 32.7, "vgg38": 280.5}
DEPTHS = {"vgg08": 8, "vgg38": 38}
BATCH = 100
VAL_FRACTION = 2_500 / 47_500


@dataclass(frozen=True)
class ModelBench:
    step_images_per_s: float
    step_fraction_of_peak: float
    epoch_images_per_s: float
    epoch_fraction_of_step: float
    gradflow_overhead: float
    step_seconds: float
    steps_timed: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(device: torch.device, size: int = 2048, seconds: float = 2.0) -> float:
    """fp32 ``size`` x ``size`` matmul rate, best of repeats over about ``seconds``."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    c = torch.empty(size, size, device=device)

    def run(reps: int) -> Callable[[], None]:
        return lambda: [torch.mm(a, b, out=c) for _ in range(reps)]  # type: ignore[func-returns-value]

    # Grow the batch of matmuls until one timing lasts ~0.2 s, then repeat it.
    reps = 1
    while (elapsed := _best_time(run(reps), device, 1)) < 0.2 and reps < 1 << 16:
        reps *= 2
    repeats = max(3, int(seconds / max(elapsed, 1e-6)))
    best = _best_time(run(reps), device, repeats)
    return 2 * size**3 * reps / best / 1e9


def _model(depth: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    spec = ExperimentSpec(depth=depth)
    model = build_model(spec).to(device, memory_format=torch.channels_last).train()
    return model, make_optimizer(model.parameters(), spec.hyperparameters)


def _bare_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, steps: int, recorder: GradFlowRecorder | None = None) -> None:
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recorder is not None:
            recorder.after_backward()
        optimizer.step()


def bench_model(name: str, device: torch.device, peak_gflops: float, steps: int,
                repeats: int = 3) -> ModelBench:
    """Bare step, gradlab epoch and gradient-flow overhead of one model."""
    model, optimizer = _model(DEPTHS[name], device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 100, (BATCH,), generator=generator).to(device)
    recorder = GradFlowRecorder(list(model.gradflow_parameters()))  # type: ignore[operator]
    _bare_steps(model, optimizer, x, y, 2, recorder)  # warm-up: allocator, oneDNN primitives

    # Bare step vs step with capture, interleaved so that both see the same disturbances.
    bare, captured = [], []
    for _ in range(repeats):
        bare.append(_best_time(lambda: _bare_steps(model, optimizer, x, y, steps), device, 1))
        captured.append(_best_time(
            lambda: _bare_steps(model, optimizer, x, y, steps, recorder), device, 1))
    step_seconds = min(bare) / steps
    overhead = statistics.median(c / b for c, b in zip(captured, bare, strict=True)) - 1.0

    # gradlab's epoch: the real loop over real batch machinery (random uint8 images).
    images = np.random.default_rng(0).integers(0, 256, (BATCH * steps, 32, 32, 3), np.uint8)
    labels = np.random.default_rng(1).integers(0, 100, BATCH * steps).astype(np.int64)
    n_val = max(1, round(BATCH * steps * VAL_FRACTION))
    batches = TrainBatches(images, labels, batch_size=BATCH, device=device, augment=True,
                           generator=generator)
    val = EvalBatches(images[:n_val], labels[:n_val], batch_size=500, device=device)
    engine = Engine(model, model, optimizer, recorder, device, contextlib.nullcontext)

    def epoch() -> None:
        train_epoch(engine, batches, 0, lambda: None)
        evaluate(engine, val)
        recorder.finish_epoch(0)

    epoch()
    epoch_seconds = _best_time(epoch, device, repeats)
    step_rate = BATCH / step_seconds
    epoch_rate = BATCH * steps / epoch_seconds
    flops = step_rate * 3 * FORWARD_MFLOP[name] * 1e6
    return ModelBench(
        step_images_per_s=step_rate,
        step_fraction_of_peak=flops / (peak_gflops * 1e9),
        epoch_images_per_s=epoch_rate,
        epoch_fraction_of_step=epoch_rate / step_rate,
        gradflow_overhead=overhead,
        step_seconds=step_seconds,
        steps_timed=steps,
    )


def run_benchmark(device: str = "auto", *, steps: dict[str, int] | None = None,
                  models: tuple[str, ...] = ("vgg08", "vgg38"), quick: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All measurements as one JSON-ready dict (``matmul_gflops``, ``vgg08``, ``vgg38``, ...)."""
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    steps = steps or ({"vgg08": 10, "vgg38": 4} if dev.type == "cpu"
                      else {"vgg08": 50, "vgg38": 20})
    repeats = 1 if quick else 3
    say("matmul peak")
    peak = matmul_gflops(dev, seconds=0.3 if quick else 2.0)
    out: dict[str, Any] = {
        "matmul_gflops": peak,
        "batch_size": BATCH,
        "forward_mflop_per_image": {m: FORWARD_MFLOP[m] for m in models},
        "environment": describe_environment(dev),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in models:
        say(name)
        out[name] = asdict(bench_model(name, dev, peak, steps[name], repeats))
    # Other processes may have slowed the first peak measurement; take the better of two.
    if not quick:
        say("matmul peak again")
        second = matmul_gflops(dev)
        if second > peak:
            for name in models:
                out[name]["step_fraction_of_peak"] *= peak / second
            out["matmul_gflops"] = peak = second
    return out
