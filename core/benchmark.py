"""`gradlab bench`: how close training runs to what this machine can do.

Measured in one process, on the training device:

- per precision the training step computes in (``precisions``: both fp32 and bf16 on a CPU
  with bf16 units, side by side; else the one ``auto`` picks: bf16 on CUDA, fp32 on other
  CPUs; ``core/precision.py``), under ``by_precision[p]``:
- ``matmul_gflops``: the faster of two GEMMs (MKL ``torch.mm``, oneDNN 1x1 conv), the
  machine's practical peak (``matmul_backend`` names the winner), in the dtype the training
  step computes in (``matmul_dtype``: float32 for fp32; bfloat16 for bf16, where the step
  runs under bf16 autocast and an fp32 peak would put it far above 100%);
- per model (VGG08, VGG38), batch 100:
  - ``step_images_per_s``: a bare training step (gradlab's model, channels_last, under the
    training autocast: forward, cross-entropy, backward, Adam step; nothing else), and
    ``step_fraction_of_peak`` = its FLOP rate (3 x forward MFLOP per image) over the matmul
    peak;
  - ``epoch_images_per_s`` / ``epoch_fraction_of_step``: gradlab's own epoch (batches gathered
    and augmented on the device, gradient-flow capture, loss buffers, divergence checks, and a
    validation pass in the seed's 2,500 : 47,500 proportion) over the bare step rate;
  - ``gradflow_overhead``: one gradient-flow capture, timed on its own, as a fraction of the
    bare step; ``gradflow_overhead_ab`` the same read as (steps with capture) / (steps
    without) - 1, which includes any cache effects but carries a few % of run-to-run noise.

  - ``conv_images_per_s`` / ``conv_fraction_of_peak``: the model's convolutions alone, each
    forward and backward timed on its own at its real shape: the rate the step would reach
    if everything else in it (activations, BN, pooling, loss, optimiser) were free, and so
    a ceiling for any step built on these convolution kernels.

The top level keeps ``auto``'s precision's figures (``precision`` names it) as before. Rates are
the best of several repeats (the least disturbed by other processes); nothing here asserts on
time. Figures go to the terminal and, with ``--json``, to stdout as JSON.
"""

from __future__ import annotations

import copy
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
from gradlab.core.checkpoints import TrainingState
from gradlab.core.environment import describe_environment, resolve_device
from gradlab.core.gradflow import GradFlowRecorder
from gradlab.core.optimization import make_optimizer
from gradlab.core.pack import Member, Pack, PackRun, train_pack_epoch
from gradlab.core.precision import Precision, resolve_precision
from gradlab.core.trainer import RunBatches, Trainer, build_trainer, evaluate
from gradlab.science.spec import ExperimentSpec

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
    # capture cost / bare step time, the capture timed on its own (the in-loop A/B difference
    # below is the same quantity but drowns in this machine's run-to-run noise of a few %)
    gradflow_overhead: float
    gradflow_overhead_ab: float
    gradflow_capture_seconds: float
    conv_images_per_s: float
    conv_fraction_of_peak: float
    step_seconds: float
    steps_timed: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


class MatmulProbe:
    """fp32 GEMMs of 2 x size^3 FLOP, sized to last about ``seconds`` per timing.

    Two kernels compute the same GEMM: ``torch.mm`` (MKL) and a 1x1 convolution (oneDNN, the
    library the convolutions themselves run on). On AMD CPUs MKL takes a slower path than
    oneDNN (measured here: 211 vs 385 GFLOP/s on a 2-core EPYC with AVX-512), so the faster
    of the two is the machine's practical peak; taking MKL alone would put the training step
    above 100% of "peak".
    """

    def __init__(self, device: torch.device, size: int = 2048, seconds: float = 0.25,
                 dtype: torch.dtype | None = None) -> None:
        self.device = device
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        if device.type == "cuda":
            size = max(size, 8192)  # a GPU needs a large product to reach its peak
        self.flop = 2 * size**3
        a = torch.randn(size, size, device=device, dtype=self.dtype)
        b = torch.randn(size, size, device=device, dtype=self.dtype)
        c = torch.empty(size, size, device=device, dtype=self.dtype)
        # The same GEMM as a 1x1 convolution over (size/256) x 16 x 16 = size pixel rows.
        if size % 256:
            raise ValueError("probe size must be a multiple of 256")
        x = torch.randn(size // 256, size, 16, 16, device=device, dtype=self.dtype).contiguous(
            memory_format=torch.channels_last)
        w = torch.randn(size, size, 1, 1, device=device, dtype=self.dtype)
        kernels: dict[str, Callable[[], object]] = {
            "torch.mm": lambda: torch.mm(a, b, out=c),
            "conv1x1": lambda: F.conv2d(x, w),
        }
        if device.type == "cuda":
            kernels.pop("conv1x1")  # cuBLAS is the peak there
        self.reps = 1
        self.backend, self._kernel = max(
            kernels.items(), key=lambda kv: self._rate_of(kv[1]))
        # Grow the burst until one timing lasts ~``seconds``.
        while self.time() < seconds and self.reps < 1 << 16:
            self.reps *= 2

    def _rate_of(self, kernel: Callable[[], object]) -> float:
        kernel()  # warm-up: primitive creation
        return 1.0 / _best_time(kernel, self.device, 3)

    def _burst(self) -> None:
        for _ in range(self.reps):
            self._kernel()

    def time(self) -> float:
        return _best_time(self._burst, self.device, 1)

    def gflops(self, seconds: float) -> float:
        return self.flop * self.reps / seconds / 1e9


def _trainer(depth: int, device: torch.device, precision: Precision | None = None) -> Trainer:
    """The model, optimiser, recorder and autocast that ``gradlab train`` would use."""
    torch.manual_seed(0)
    trainer = build_trainer(ExperimentSpec(depth=depth), device, precision)
    trainer.model.train()
    return trainer


def _bare_steps(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int,
                capture: bool = False) -> None:
    for _ in range(steps):
        with trainer.autocast():
            loss = F.cross_entropy(trainer.model(x).float(), y)
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        if capture:
            trainer.recorder.after_backward()
        trainer.optimizer.step()


@dataclass
class SyntheticStep:
    """VGG of one depth (default spec, channels_last), its optimiser and one fixed random batch
    of 100 on the CPU: the training step the stand-alone scripts in ``bench/`` time."""

    model: torch.nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor

    def loss(self) -> torch.Tensor:
        return F.cross_entropy(self.forward(self.x), self.y)

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)

    def __call__(self) -> None:
        self.backward(self.loss())
        self.optimizer.step()


def synthetic_step(depth: int, *, compiled: bool = False) -> SyntheticStep:
    """A fresh ``SyntheticStep`` (seeded); ``compiled`` wraps the forward in torch.compile."""
    torch.manual_seed(0)
    spec = ExperimentSpec(depth=depth)
    model = build_model(spec).to(memory_format=torch.channels_last).train()
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (BATCH,))
    forward = torch.compile(model) if compiled else model
    return SyntheticStep(model, forward, make_optimizer(model.parameters(), spec.hyperparameters),
                         x, y)


def _gradlab_epoch(name: str, trainer: Trainer, steps: int,
                   generator: torch.Generator) -> Callable[[], None]:
    """gradlab's epoch: the training loop's own (a pack of this one run) over the real batch
    machinery (random uint8 images), then a validation pass and the gradient-flow read."""
    device = trainer.device
    images = np.random.default_rng(0).integers(0, 256, (BATCH * steps, 32, 32, 3), np.uint8)
    labels = np.random.default_rng(1).integers(0, 100, BATCH * steps).astype(np.int64)
    n_val = max(1, round(BATCH * steps * VAL_FRACTION))
    batches = TrainBatches(images, labels, batch_size=BATCH, device=device, augment=True,
                           generator=generator)
    val = EvalBatches(images[:n_val], labels[:n_val], batch_size=500, device=device)
    run = PackRun(ExperimentSpec(depth=DEPTHS[name]), 0)
    member = Member(run, trainer, generator, RunBatches(batches, val, val), TrainingState(), {})
    pack = Pack([member], device, cuda_graphs=False)

    def epoch() -> None:
        train_pack_epoch(pack, 0)
        evaluate(trainer, val)
        trainer.recorder.finish_epoch(0)

    return epoch


def bench_model(name: str, device: torch.device, steps: int, repeats: int = 3,
                probe: MatmulProbe | None = None,
                precision: Precision | None = None) -> tuple[ModelBench, float]:
    """Bare step, gradlab epoch and gradient-flow overhead of one model in ``precision`` (the
    spec's ``auto`` when None); and the best matmul rate seen while measuring it.

    Each round times a matmul burst, bare steps, steps with capture and a gradlab epoch back
    to back; ratios are taken within a round and the median over rounds is reported, so that
    load from other processes, which drifts over seconds, largely cancels out.
    """
    probe = probe or MatmulProbe(device)
    trainer = _trainer(DEPTHS[name], device, precision)
    recorder = trainer.recorder
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (BATCH,), generator=generator).to(device)
    epoch = _gradlab_epoch(name, trainer, steps, generator)

    def bare() -> None:
        _bare_steps(trainer, x, y, steps)

    def captured() -> None:
        _bare_steps(trainer, x, y, steps, capture=True)

    epoch()  # warm-up: allocator, oneDNN primitives, both code paths
    bare()
    time.sleep(0.3)
    timed = {"bare": bare, "captured": captured, "epoch": epoch}
    order = list(timed)
    rounds = []
    for i in range(repeats):
        # Rotate the order (whatever runs first after a pause or a burst is disadvantaged)
        # and time the matmul burst last, then let its spinning worker threads go idle.
        row = {key: _best_time(timed[key], device, 1) for key in order[i % 3:] + order[:i % 3]}
        row["matmul"] = probe.time()
        time.sleep(0.3)
        rounds.append(row)
    capture = _capture_seconds(recorder, device)
    conv_seconds = _conv_seconds(trainer.model, device, probe.dtype)
    flop_per_step = BATCH * 3 * FORWARD_MFLOP[name] * 1e6
    best_step = min(r["bare"] for r in rounds) / steps
    best_epoch = min(r["epoch"] for r in rounds)
    bench = ModelBench(
        step_images_per_s=BATCH / best_step,
        step_fraction_of_peak=statistics.median(
            flop_per_step * steps / r["bare"] / (probe.gflops(r["matmul"]) * 1e9)
            for r in rounds),
        epoch_images_per_s=BATCH * steps / best_epoch,
        epoch_fraction_of_step=statistics.median(r["bare"] / r["epoch"] for r in rounds),
        gradflow_overhead=capture / best_step,
        gradflow_overhead_ab=statistics.median(r["captured"] / r["bare"] - 1.0 for r in rounds),
        gradflow_capture_seconds=capture,
        conv_images_per_s=BATCH / conv_seconds,
        conv_fraction_of_peak=flop_per_step / conv_seconds / (probe.gflops(
            min(r["matmul"] for r in rounds)) * 1e9),
        step_seconds=best_step,
        steps_timed=steps,
    )
    return bench, max(probe.gflops(r["matmul"]) for r in rounds)


def _conv_shapes(model: torch.nn.Module) -> list[tuple[torch.nn.Conv2d, torch.Size]]:
    """Each convolution with the input shape it sees in a batch-100 forward pass (traced on the
    meta device, where no kernel runs and no fused path hides a module call)."""
    shapes: list[tuple[torch.nn.Conv2d, torch.Size]] = []
    meta = copy.deepcopy(model).to("meta")
    for module in meta.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(
                lambda m, args: shapes.append((m, args[0].shape)))
    with torch.no_grad():
        meta(torch.empty(BATCH, 3, 32, 32, device="meta"))
    return shapes


def _conv_seconds(model: torch.nn.Module, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> float:
    """Seconds per training step spent in the model's convolutions, each timed alone (in
    ``dtype``: bfloat16 is what they compute in under bf16 autocast)."""
    return sum(_one_conv_seconds(conv, shape, device, dtype)
               for conv, shape in _conv_shapes(model))


def _one_conv_seconds(conv: torch.nn.Conv2d, in_shape: torch.Size, device: torch.device,
                      dtype: torch.dtype = torch.float32) -> float:
    x = torch.randn(in_shape, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(conv.weight.shape, device=device, dtype=dtype)
    bias = (None if conv.bias is None
            else torch.randn(conv.bias.shape, device=device, dtype=dtype))
    grad = torch.randn_like(F.conv2d(x, weight, bias, conv.stride, conv.padding))
    bias_sizes = None if bias is None else list(bias.shape)
    # The first layer's input needs no gradient; autograd skips it in training too.
    mask = [in_shape[1] != 3, True, bias is not None]

    def forward_and_backward() -> None:
        F.conv2d(x, weight, bias, conv.stride, conv.padding)
        torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, list(conv.stride),
                                            list(conv.padding), [1, 1], False, [0, 0], 1, mask)

    forward_and_backward()
    return _best_time(forward_and_backward, device, 5)


def _capture_seconds(recorder: GradFlowRecorder, device: torch.device, calls: int = 50) -> float:
    """Seconds of one gradient-flow capture on the gradients the last step left behind."""
    recorder.start_epoch()
    return _best_time(lambda: [recorder.after_backward() for _ in range(calls)], device, 3) / calls


def bench_precisions(device: torch.device) -> tuple[Precision, ...]:
    """The precisions worth timing here: both where the CPU has bf16 units (the choice is
    real), else the one ``auto`` trains in."""
    if device.type == "cpu" and resolve_precision("auto", device) == "bf16":
        return ("fp32", "bf16")
    return (resolve_precision("auto", device),)


def run_benchmark(device: str = "auto", *, steps: dict[str, int] | None = None,
                  models: tuple[str, ...] = ("vgg08", "vgg38"), quick: bool = False,
                  progress: Callable[[str], None] | None = None,
                  precisions: tuple[Precision, ...] | None = None) -> dict[str, Any]:
    """All measurements as one JSON-ready dict: ``by_precision[p]`` per precision timed (each
    model's precisions back to back), and ``auto``'s figures at the top level as before."""
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    # Timings of a second or more each: shorter ones read the CPU step rate up to 25% low.
    steps = steps or ({"vgg08": 40, "vgg38": 10} if dev.type == "cpu"
                      else {"vgg08": 50, "vgg38": 20})
    repeats = 1 if quick else 5
    precisions = precisions or bench_precisions(dev)
    by_precision: dict[str, dict[str, Any]] = {}
    for p in precisions:
        say(f"matmul peak ({p})")
        probe = MatmulProbe(dev, seconds=0.1 if quick else 0.25,
                            dtype=torch.bfloat16 if p == "bf16" else torch.float32)
        by_precision[p] = {"probe": probe,
                           "matmul_gflops": probe.gflops(min(probe.time()
                                                             for _ in range(1 if quick else 4))),
                           "matmul_backend": probe.backend,
                           "matmul_dtype": str(probe.dtype).removeprefix("torch.")}
    for name in models:
        for p in precisions:
            say(f"{name} ({p})")
            figures = by_precision[p]
            bench, seen_peak = bench_model(name, dev, steps[name], repeats, figures["probe"], p)
            figures[name] = asdict(bench)
            figures["matmul_gflops"] = max(figures["matmul_gflops"], seen_peak)
    for figures in by_precision.values():
        figures.pop("probe")
    auto = resolve_precision("auto", dev)
    top = by_precision.get(auto, by_precision[precisions[0]])
    return {
        **top,
        "precision": auto if auto in by_precision else precisions[0],
        "precisions": list(precisions),
        "by_precision": by_precision,
        "batch_size": BATCH,
        "forward_mflop_per_image": {m: FORWARD_MFLOP[m] for m in models},
        "environment": describe_environment(dev),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": "rates: best round; fractions and overhead: median of per-round ratios "
                  f"({repeats} rounds of matmul burst, bare steps, captured steps, epoch); "
                  "each model's precisions timed back to back in this process",
    }
