"""N same-shaped VGGs as one model (horizontal fusion): the pack's training forward.

The forward itself is the architecture's own, written once over N parts
(``architectures.VGG.forward_many``: grouped convolutions, BatchNorm over the stacked
channels, a batched head). This wrapper only checks that the models fit together, switches
their mode together and lays the runs' batches side by side.

A pack of one calls its model as a module (``model(x)``): the same call as a model alone, so
module hooks and a subclass's ``forward`` see it too.

The numbers of N > 1 equal the runs trained alone up to float reassociation (grouped kernels
sum in another order than the per-run kernels), not bit for bit; see tests/core/test_pack.py.
"""

from __future__ import annotations

import torch

from gradlab.core.architectures import VGG


class FusedVGG:
    """The forward pass of ``models`` (same architecture) as one grouped network.

    ``forward(x)`` takes ``[B, 3N, H, W]`` (run i's images in channels 3i..3i+2) and returns
    logits ``[N, B, classes]``. It holds no parameters of its own;
    each model's mode (train or eval) is its own.
    """

    def __init__(self, models: list[VGG]) -> None:
        if not models:
            raise ValueError("a pack needs at least one model")
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
        if len(shapes) != 1:
            raise ValueError("the models of a pack must have the same architecture")
        self.models = models

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.models) == 1:
            logits: torch.Tensor = self.models[0](x)
            return logits.unsqueeze(0)
        return VGG.forward_many(self.models, x)


def stack_inputs(batches: list[torch.Tensor]) -> torch.Tensor:
    """Run i's ``[B, 3, H, W]`` batch into channels 3i..3i+2 of one channels_last tensor; one
    batch is passed as it is (no copy when it is channels_last already, as batches are)."""
    if len(batches) == 1:
        return batches[0].contiguous(memory_format=torch.channels_last)
    return torch.cat(batches, dim=1).contiguous(memory_format=torch.channels_last)
