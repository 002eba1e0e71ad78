"""Per-layer gradient statistics, computed on the device with batched ops.

After every backward pass, three ``torch._foreach_norm`` calls (L1, L-inf, L2) over the tracked
weight gradients give mean |g| (= L1 / numel), max |g| and the L2 norm of every layer at once;
they are stacked into one [3, layers] tensor and added to a running sum on the device. The
host sees them once per epoch (``finish_epoch``): no ``.item()`` per layer or per step.
"""

from __future__ import annotations

import torch
from torch import nn

from gradlab.science.records import GRADFLOW_STATS, GradFlowEpoch

_ORDERS = {"mean_abs": 1.0, "max_abs": float("inf"), "l2": 2.0}


class GradFlowRecorder:
    """Collects gradient statistics of ``named_weights`` (depth order) over one epoch."""

    def __init__(self, named_weights: list[tuple[str, nn.Parameter]]) -> None:
        if not named_weights:
            raise ValueError("no weights to record")
        self.layers = tuple(name for name, _ in named_weights)
        self.weights = [w for _, w in named_weights]
        device = self.weights[0].device
        numel = torch.tensor([w.numel() for w in self.weights], dtype=torch.float32)
        # Row scale: L1 / numel is the mean |g|; max and L2 are taken as they are.
        self._scale = torch.stack(
            [1.0 / numel if s == "mean_abs" else torch.ones_like(numel) for s in GRADFLOW_STATS]
        ).to(device)
        self._sum = torch.zeros(len(GRADFLOW_STATS), len(self.layers), device=device)
        self._last = torch.zeros_like(self._sum)
        self._steps = 0

    def start_epoch(self) -> None:
        self._sum.zero_()
        self._last.zero_()
        self._steps = 0

    @torch.no_grad()
    def after_backward(self) -> None:
        """Record the gradients now in ``.grad`` (call between backward and optimizer.step)."""
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self.weights]
        rows = [torch.stack(torch._foreach_norm(grads, _ORDERS[s])) for s in GRADFLOW_STATS]
        torch.mul(torch.stack(rows).float(), self._scale, out=self._last)
        self._sum.add_(self._last)
        self._steps += 1

    def finish_epoch(self, epoch: int) -> GradFlowEpoch:
        """The epoch's statistics: one device-to-host transfer."""
        if self._steps == 0:
            raise RuntimeError("finish_epoch called before any training step")
        both = torch.stack([self._last, self._sum / self._steps]).cpu().tolist()
        last, mean = both
        return GradFlowEpoch(
            epoch=epoch,
            layers=self.layers,
            last_batch={s: last[i] for i, s in enumerate(GRADFLOW_STATS)},
            epoch_mean={s: mean[i] for i, s in enumerate(GRADFLOW_STATS)},
        )
