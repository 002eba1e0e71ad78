"""`gradlab bench --pack N`: what a fused pack of N runs gains over N separate steps.

Per pack size N and model (batch 100 per run, channels_last, the training autocast):

- ``images_per_s``: the fused step's aggregate rate, N x 100 images over one fused step
  (grouped forward and backward, each run's gradient-flow capture and Adam step: what
  ``gradlab.core.pack`` runs per step);
- ``single_images_per_s``: a bare step of one run alone (forward, loss, backward, capture,
  Adam), timed in the same round;
- ``ratio_to_separate``: N separate steps' time over the fused step's time (the median over
  rounds of per-round ratios, so that drifting load from other processes largely cancels).
  Above 1, a pack trains N runs faster than one after another on this device.

On CUDA, ``cuda_graphs`` (default on) compiles the fused forward with
``torch.compile(mode="reduce-overhead")``, as ``fit_pack`` does. Nothing here asserts on time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F

from gradlab.core.benchmark import BATCH, DEPTHS, _best_time
from gradlab.core.environment import describe_environment, resolve_device
from gradlab.core.fused_vgg import FusedVGG
from gradlab.core.pack import fused_step
from gradlab.core.trainer import Trainer, build_trainer
from gradlab.science.spec import ExperimentSpec

PACK_SIZES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class PackBench:
    pack: int
    images_per_s: float
    single_images_per_s: float
    ratio_to_separate: float
    fused_step_seconds: float
    single_step_seconds: float
    steps_timed: int


def make_trainers(depth: int, count: int, dev: torch.device, first_seed: int = 0,
                  ) -> list[Trainer]:
    """``count`` trainers of the default spec at ``depth``, seeded ``first_seed``, +1, ..."""
    spec = ExperimentSpec(depth=depth)
    trainers = []
    for seed in range(first_seed, first_seed + count):
        torch.manual_seed(seed)
        trainers.append(build_trainer(spec, dev))
    return trainers


def _single_steps(trainer: Trainer, x: torch.Tensor, y: torch.Tensor,
                  steps: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(steps):
            with trainer.autocast():
                loss = F.cross_entropy(trainer.model(x).float(), y)
            trainer.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            trainer.recorder.after_backward()
            trainer.optimizer.step()
    return run


def fused_steps(trainers: list[Trainer], dev: torch.device, steps: int,
                cuda_graphs: bool) -> Callable[[], None]:
    """``steps`` fused training steps of ``trainers`` as one pack on a fixed random batch (the
    forward compiled into CUDA graphs on CUDA when ``cuda_graphs``, as ``fit_pack`` does)."""
    count = len(trainers)
    fused = FusedVGG([t.model for t in trainers])
    forward: Callable[[torch.Tensor], torch.Tensor] = fused
    if cuda_graphs and dev.type == "cuda":
        forward = torch.compile(fused.forward, mode="reduce-overhead")
    x = torch.randn(BATCH, 3 * count, 32, 32, device=dev).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 100, (count, BATCH), device=dev)

    def run() -> None:
        for _ in range(steps):
            fused_step(forward, trainers, x, y, trainers[0].autocast)
    return run


def bench_pack(name: str, count: int, dev: torch.device, steps: int, repeats: int,
               cuda_graphs: bool = True) -> PackBench:
    """One model at one pack size: fused and single steps timed in alternating rounds."""
    depth = DEPTHS[name]
    single = make_trainers(depth, 1, dev)[0]
    x = torch.randn(BATCH, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (BATCH,), device=dev)
    one = _single_steps(single, x, y, steps)
    fused = fused_steps(make_trainers(depth, count, dev), dev, steps, cuda_graphs)
    one()  # warm-up: allocator, kernel selection, CUDA graph capture
    fused()
    rounds = []
    for i in range(repeats):
        pair = (("one", one), ("fused", fused)) if i % 2 == 0 else (("fused", fused), ("one", one))
        rounds.append({key: _best_time(fn, dev, 1) / steps for key, fn in pair})
    best_one = min(r["one"] for r in rounds)
    best_fused = min(r["fused"] for r in rounds)
    return PackBench(
        pack=count,
        images_per_s=count * BATCH / best_fused,
        single_images_per_s=BATCH / best_one,
        ratio_to_separate=statistics.median(count * r["one"] / r["fused"] for r in rounds),
        fused_step_seconds=best_fused,
        single_step_seconds=best_one,
        steps_timed=steps,
    )


def run_pack_benchmark(device: str = "auto", *, sizes: tuple[int, ...] = PACK_SIZES,
                       models: tuple[str, ...] = ("vgg08", "vgg38"), steps: int | None = None,
                       quick: bool = False, cuda_graphs: bool = True,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every (model, pack size) as one JSON-ready dict."""
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    repeats = 1 if quick else 3
    out: dict[str, Any] = {
        "batch_size_per_run": BATCH,
        "cuda_graphs": cuda_graphs and dev.type == "cuda",
        "environment": describe_environment(dev),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": f"best of {repeats} alternating rounds per rate; ratio: median of per-round "
                  "(N x single step) / fused step",
    }
    for name in models:
        per_model = []
        for count in sizes:
            say(f"{name} pack {count}")
            run_steps = steps or (3 if dev.type == "cpu" else 30)
            per_model.append(asdict(bench_pack(name, count, dev, run_steps, repeats,
                                               cuda_graphs)))
        out[name] = per_model
    return out
