"""How closely a fused pack matches its runs trained alone, in fp32 and in bf16; and how far
the two precisions are apart. The figures behind tests/core/test_pack_bf16.py's bounds.

    .venv/bin/python bench/pack_precision_match.py

Four runs of test_pack's VGG38 BN + residual (width 8, 10 random images: one step an epoch,
their own learning rates and weight decays), two epochs, one thread; synthetic data. Per
run and epoch: the training loss's relative difference and the largest per-layer difference
of last-batch mean |g| in decades (|log10(a / b)|). Epoch 0 is the first step (identical
parameters); epoch 1 has been amplified by one step of training.
"""

from __future__ import annotations

import numpy as np
import torch

from gradlab.core.data import CifarArrays, random_cifar
from gradlab.core.pack import PackRun, fit_pack
from gradlab.core.training_loop import fit
from gradlab.science.records import EpochDecision, EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec

SEEDS = (0, 256, 512, 1024)
LEARNING_RATES = (1e-3, 2e-3, 5e-4, 1e-3)
WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-3)
Step = tuple[EpochMetrics, GradFlowEpoch]


def spec(index: int, precision: str) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "depth": 38, "width": 8, "batch_norm": True, "residual": True,
        "hyperparameters": {"epochs": 2, "batch_size": 10, "precision": precision,
                            "learning_rate": LEARNING_RATES[index],
                            "weight_decay": WEIGHT_DECAYS[index]},
        "data": {"train_limit": 10, "val_limit": 20, "test_limit": 20},
    })


class Keeper:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def __call__(self, metrics: EpochMetrics, gradflow: GradFlowEpoch,
                 _checkpoint: object) -> EpochDecision:
        self.steps.append((metrics, gradflow))
        return EpochDecision.CONTINUE


def alone(data: CifarArrays, precision: str) -> list[list[Step]]:
    keepers = [Keeper() for _ in SEEDS]
    for i, seed in enumerate(SEEDS):
        fit(spec(i, precision), seed, data, on_epoch_end=keepers[i])
    return [k.steps for k in keepers]


def packed(data: CifarArrays, precision: str) -> list[list[Step]]:
    keepers = [Keeper() for _ in SEEDS]
    fit_pack([PackRun(spec(i, precision), seed, keepers[i]) for i, seed in enumerate(SEEDS)],
             data)
    return [k.steps for k in keepers]


def compare(label: str, ours: list[list[Step]], theirs: list[list[Step]]) -> None:
    for run, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for epoch, (x, y) in enumerate(zip(a, b, strict=True)):
            loss = abs(x[0].train_loss - y[0].train_loss) / abs(y[0].train_loss)
            flows = [np.log10(np.asarray(s[1].last_batch["mean_abs"])) for s in (x, y)]
            decades = float(np.max(np.abs(flows[0] - flows[1])))
            print(f"{label:<22} run {run} epoch {epoch}: loss {loss:.2e} relative, "
                  f"gradient flow {decades:.3f} decade at most")


def main() -> None:
    torch.set_num_threads(1)
    data = random_cifar()
    alone_runs = {p: alone(data, p) for p in ("fp32", "bf16")}
    for p in ("fp32", "bf16"):
        compare(f"{p} pack vs alone", packed(data, p), alone_runs[p])
    compare("fp32 vs bf16, alone", alone_runs["fp32"], alone_runs["bf16"])


if __name__ == "__main__":
    main()
