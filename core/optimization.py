"""Optimisers and learning-rate schedules of the seed study.

- Adam with *coupled* L2 weight decay on every parameter (BN and biases included), which is
  what ``torch.optim.Adam(weight_decay=...)`` does and what the seed framework used.
- SGD with momentum and optional Nesterov, weight decay likewise coupled.
- Cosine annealing in the seed's per-epoch closed form, constant within an epoch:
  ``lr(e) = min + (max - min) * (1 + cos(pi * e / E)) / 2``; or a constant rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from gradlab.science.spec import Hyperparameters


def make_optimizer(params: Iterable[torch.nn.Parameter],
                   hp: Hyperparameters) -> torch.optim.Optimizer:
    """The spec's optimiser over ``params`` (all of them share one group and one decay)."""
    # fused=True: one vectorised kernel per parameter on CPU and CUDA, the same algorithm as
    # the default per-tensor loop (which costs ~10 small ops per parameter per step, several
    # percent of a VGG08 step on the CPU).
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.learning_rate, betas=hp.adam_betas,
                                eps=hp.adam_eps, weight_decay=hp.weight_decay, fused=True)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.learning_rate, momentum=hp.momentum,
                               nesterov=hp.nesterov, weight_decay=hp.weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")


def learning_rate_at(hp: Hyperparameters, epoch: int) -> float:
    """The learning rate used throughout ``epoch`` (0-based)."""
    if not 0 <= epoch < hp.epochs:
        raise ValueError(f"epoch must lie in [0, {hp.epochs}), got {epoch}")
    if hp.lr_schedule == "constant":
        return hp.learning_rate
    low, high = hp.min_learning_rate, hp.learning_rate
    return low + (high - low) * (1.0 + math.cos(math.pi * epoch / hp.epochs)) / 2.0


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
