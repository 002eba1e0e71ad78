"""Does bf16 autocast change the science? fp32 against bf16 on real CIFAR-100, side by side.

    nice -n 5 .venv/bin/python bench/precision_fidelity.py --data-dir ../shared/data/cifar100

Per model (VGG08; VGG38 with BatchNorm and residual skips): 3 epochs on the first 5,000
training images, seeds 0, 1, 2, once in fp32 and once in bf16 (the rest of the spec is the
seed study's). Printed:

- final test accuracy (best-validation weights; the first 5,000 test images, validation on
  1,000) per precision:
  mean +- sample std over the seeds, and the difference of the means against that spread;
- per-layer gradient flow (last epoch, mean |g| averaged over every step): the largest
  |log10(bf16 / fp32)| over layers of the seed-mean, against the seed spread of the same
  statistic in fp32 (the largest std over layers of log10 mean |g| across seeds);
- plain VGG38 (no BatchNorm, no skips), one epoch on 1,000 images: the entry conv's mean |g|
  in both precisions (vanishing gradients still read as ~1e-18 under bf16, whose exponent
  range is fp32's).

Prints the figures and the machine; asserts nothing. ``--quick`` runs a tiny version (for a
check that the script works, not for the figures).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from gradlab.core.data import CifarArrays, load_cifar, resolve_data_dir
from gradlab.core.environment import describe_environment
from gradlab.core.precision import cpu_has_fast_bf16
from gradlab.core.training_loop import fit
from gradlab.science.records import TrainingResult
from gradlab.science.spec import ExperimentSpec

PRECISIONS = ("fp32", "bf16")
# 5,000 training images; validation (it picks the best epoch) and test sets cut to keep the
# 12 VGG38/VGG08 runs within the hour on a shared 2-core machine.
LIMITS = {"train_limit": 5_000, "val_limit": 1_000, "test_limit": 5_000}
QUICK_LIMITS = {"train_limit": 200, "val_limit": 100, "test_limit": 100}
MODELS = {
    "vgg08": {"depth": 8},
    "vgg38-bn-res": {"depth": 38, "batch_norm": True, "residual": True},
}


def spec_for(model: str, precision: str, limits: dict[str, int], epochs: int,
             **extra: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "name": model, **MODELS.get(model, {}), **extra,
        "hyperparameters": {"epochs": epochs, "precision": precision},
        "data": limits,
    })


def log10_layers(result: TrainingResult) -> list[float]:
    """log10 of the last epoch's per-layer mean |g| (averaged over every step)."""
    return [math.log10(max(v, 1e-45)) for v in result.gradflow[-1].epoch_mean["mean_abs"]]


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare_model(model: str, data: CifarArrays, seeds: list[int], limits: dict[str, int],
                  epochs: int) -> dict[str, Any]:
    """fp32 and bf16 runs of ``model`` for every seed: accuracies and gradient-flow figures."""
    acc: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    flow: dict[str, list[list[float]]] = {p: [] for p in PRECISIONS}
    seconds: dict[str, float] = dict.fromkeys(PRECISIONS, 0.0)
    for seed in seeds:
        for precision in PRECISIONS:
            started = time.perf_counter()
            result = fit(spec_for(model, precision, limits, epochs), seed, data)
            seconds[precision] += time.perf_counter() - started
            assert result.test is not None and result.environment["precision"] == precision
            acc[precision].append(result.test.acc)
            flow[precision].append(log10_layers(result))
    layers = len(flow["fp32"][0])
    seed_mean = {p: [statistics.fmean(run[j] for run in flow[p]) for j in range(layers)]
                 for p in PRECISIONS}
    gap = [abs(b - f) for b, f in zip(seed_mean["bf16"], seed_mean["fp32"], strict=True)]
    seed_sd = [spread([run[j] for run in flow["fp32"]])[1] for j in range(layers)]
    return {"model": model, "acc": acc, "seconds": seconds, "layers": layers,
            "gradflow_max_log10_gap": max(gap), "gradflow_worst_layer": gap.index(max(gap)),
            "gradflow_median_log10_gap": statistics.median(gap),
            "gradflow_max_seed_sd_log10": max(seed_sd),
            "gradflow_median_seed_sd_log10": statistics.median(seed_sd)}


def vanishing(data: CifarArrays, train_limit: int) -> dict[str, float]:
    """Plain VGG38's entry-conv mean |g| (last batch and epoch mean) in both precisions."""
    out = {}
    limits = {"train_limit": train_limit, "val_limit": 100, "test_limit": 100}
    for precision in PRECISIONS:
        result = fit(spec_for("vgg38", precision, limits, 1, depth=38), 0, data)
        flow = result.gradflow[-1]
        out[f"{precision}_last_batch"] = flow.last_batch["mean_abs"][0]
        out[f"{precision}_epoch_mean"] = flow.epoch_mean["mean_abs"][0]
    return out


def print_table(rows: list[dict[str, Any]], entry: dict[str, float]) -> None:
    print("| model | fp32 test acc | bf16 test acc | bf16 - fp32 | seed std (fp32) "
          "| grad-flow max/median abs log10 gap | seed std of log10 (max/median) | s fp32/bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        (fm, fs), (bm, bs) = spread(r["acc"]["fp32"]), spread(r["acc"]["bf16"])
        print(f"| {r['model']} | {fm:.4f} +- {fs:.4f} | {bm:.4f} +- {bs:.4f} | {bm - fm:+.4f} "
              f"| {fs:.4f} | {r['gradflow_max_log10_gap']:.3f} / "
              f"{r['gradflow_median_log10_gap']:.3f} (layer {r['gradflow_worst_layer']} "
              f"of {r['layers']}) | {r['gradflow_max_seed_sd_log10']:.3f} / "
              f"{r['gradflow_median_seed_sd_log10']:.3f} "
              f"| {r['seconds']['fp32']:.0f} / {r['seconds']['bf16']:.0f} |")
    print()
    print("plain VGG38, entry conv mean |g| after one epoch: "
          + ", ".join(f"{k} {v:.2e}" for k, v in entry.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny run: checks the script")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args()
    data = load_cifar(resolve_data_dir(args.data_dir))
    limits = (QUICK_LIMITS if args.quick else LIMITS).copy()
    epochs, plain_limit = (1, 200) if args.quick else (3, 1_000)
    env = describe_environment(torch.device("cpu"))
    print(f"{env['processor']}, {env['torch_threads']} threads, torch {env['torch']}, "
          f"bf16 units: {cpu_has_fast_bf16()}; {limits}, {epochs} epochs, "
          f"seeds {args.seeds}", flush=True)
    rows = [compare_model(m, data, args.seeds, limits, epochs) for m in MODELS]
    entry = vanishing(data, plain_limit)
    print_table(rows, entry)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "entry_conv": entry, "env": env}))


if __name__ == "__main__":
    main()
