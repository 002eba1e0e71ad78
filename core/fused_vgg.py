"""N same-shaped VGGs as one model: the runs' operators side by side (horizontal fusion).

Run i's batch occupies channels ``[i*C, (i+1)*C)`` of one tensor ``[B, N*C, h, w]``:

- every convolution is one grouped convolution (``groups=N``, the runs' weights concatenated
  along the output channels): a grouped convolution never mixes groups;
- BatchNorm runs over the N*C channels: its statistics are per channel, hence per run; the
  running statistics are written back into each run's own buffers after the step;
- leaky ReLU, pooling and skip sums are element- or channel-wise, unchanged;
- the linear head is one batched matmul over ``[N, B, C] x [N, C, classes]``.

The parameters stay the runs' own (each run's ``VGG`` keeps its ``nn.Parameter`` tensors):
they are concatenated in the forward pass, so autograd hands each run exactly its own
gradient, and each run keeps its own optimiser, gradient-flow recorder and checkpoint (the
same bytes layout as a run trained alone). The concatenations cost a copy of each layer's
small weights per step, negligible beside the convolutions.

The numbers equal the runs trained alone up to float reassociation (grouped kernels sum in
another order than the per-run kernels), not bit for bit; see tests/core/test_pack.py.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.core.architectures import LEAKY_SLOPE, VGG
from gradlab.science.spec import STAGES


def _conv(convs: list[nn.Conv2d], x: torch.Tensor) -> torch.Tensor:
    weight = torch.cat([c.weight for c in convs])
    bias = None if convs[0].bias is None else torch.cat([c.bias for c in convs])  # type: ignore[misc]
    return F.conv2d(x, weight, bias, convs[0].stride, convs[0].padding, groups=len(convs))


def _norm(norms: list[nn.Module | None], x: torch.Tensor, training: bool) -> torch.Tensor:
    """BatchNorm over the runs' stacked channels; running statistics back into each run."""
    if norms[0] is None:
        return x
    bns: list[nn.BatchNorm2d] = norms  # type: ignore[assignment]
    weight = torch.cat([n.weight for n in bns])
    bias = torch.cat([n.bias for n in bns])
    mean = torch.cat([n.running_mean for n in bns])  # type: ignore[misc]
    var = torch.cat([n.running_var for n in bns])  # type: ignore[misc]
    first = bns[0]
    out = F.batch_norm(x, mean, var, weight, bias, training, first.momentum or 0.0, first.eps)
    if training:
        # F.batch_norm updated the concatenated copies in place; each run owns its slice.
        with torch.no_grad():
            count = len(bns)
            torch._foreach_copy_([n.running_mean for n in bns], list(mean.chunk(count)))  # type: ignore[misc]
            torch._foreach_copy_([n.running_var for n in bns], list(var.chunk(count)))  # type: ignore[misc]
            torch._foreach_add_([n.num_batches_tracked for n in bns], 1)  # type: ignore[misc]
    return out


def _act(x: torch.Tensor) -> torch.Tensor:
    # In place, as architectures._activation_: x is a fresh BN output or skip sum.
    return F.leaky_relu_(x, LEAKY_SLOPE)


def _conv_norm_act(convs: list[nn.Conv2d], norms: list[nn.Module | None], x: torch.Tensor,
                   training: bool) -> torch.Tensor:
    out = _norm(norms, _conv(convs, x), training)
    # Without BN the conv output is what its backward saved for nothing (conv saves its input),
    # but leaky_relu's backward needs its input: not in place then.
    return _act(out) if norms[0] is not None else F.leaky_relu(out, LEAKY_SLOPE)


def _conv_norm_add_act(convs: list[nn.Conv2d], norms: list[nn.Module | None], x: torch.Tensor,
                       skip: torch.Tensor, training: bool) -> torch.Tensor:
    return _act(_norm(norms, _conv(convs, x), training).add_(skip))


def _block(blocks: list[nn.Module], x: torch.Tensor, training: bool) -> torch.Tensor:
    """ProcessingBlock for N runs (see architectures.ProcessingBlock)."""
    conv1 = [b.conv1 for b in blocks]
    norm1 = [b.bn1 for b in blocks]
    out = _conv_norm_act(conv1, norm1, x, training)  # type: ignore[arg-type]
    conv2, norm2 = [b.conv2 for b in blocks], [b.bn2 for b in blocks]
    if not blocks[0].residual:
        return _conv_norm_act(conv2, norm2, out, training)  # type: ignore[arg-type]
    return _conv_norm_add_act(conv2, norm2, out, x, training)  # type: ignore[arg-type]


def _reduce(blocks: list[nn.Module], x: torch.Tensor, training: bool) -> torch.Tensor:
    """ReductionBlock for N runs (see architectures.ReductionBlock)."""
    conv1, norm1 = [b.conv1 for b in blocks], [b.bn1 for b in blocks]
    out = F.avg_pool2d(_conv_norm_act(conv1, norm1, x, training), 2, 2)  # type: ignore[arg-type]
    conv2, norm2 = [b.conv2 for b in blocks], [b.bn2 for b in blocks]
    if not blocks[0].skip:
        return _conv_norm_act(conv2, norm2, out, training)  # type: ignore[arg-type]
    return _conv_norm_add_act(conv2, norm2, out, F.avg_pool2d(x, 2, 2), training)  # type: ignore[arg-type]


class FusedVGG:
    """The forward pass of ``models`` (same architecture) as one grouped network.

    ``forward(x)`` takes ``[B, 3N, H, W]`` (run i's images in channels 3i..3i+2) and returns
    logits ``[N, B, classes]``. It holds no parameters of its own.
    """

    def __init__(self, models: list[VGG]) -> None:
        if not models:
            raise ValueError("a pack needs at least one model")
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
        if len(shapes) != 1:
            raise ValueError("the models of a pack must have the same architecture")
        self.models = models
        self.training = True

    def train(self, mode: bool = True) -> None:
        self.training = mode
        for model in self.models:
            model.train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        models, training = self.models, self.training
        x = _act(_norm([m.entry.bn for m in models], _conv([m.entry.conv for m in models], x),
                       training))
        for s in range(STAGES):
            stages = [getattr(m, f"stage{s}") for m in models]
            for name, _ in stages[0].named_children():
                parts = [getattr(stage, name) for stage in stages]
                x = (_reduce if name == "reduce" else _block)(parts, x, training)
        return self._head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        count = len(self.models)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # [B, N*C]
        per_run = pooled.view(pooled.shape[0], count, -1).transpose(0, 1)  # [N, B, C]
        weight = torch.stack([m.head.linear.weight for m in self.models])  # [N, K, C]
        bias = torch.stack([m.head.linear.bias for m in self.models])  # [N, K]
        return torch.baddbmm(bias.unsqueeze(1), per_run, weight.transpose(1, 2))


def stack_inputs(batches: list[torch.Tensor]) -> torch.Tensor:
    """Run i's ``[B, 3, H, W]`` batch into channels 3i..3i+2 of one channels_last tensor."""
    return torch.cat(batches, dim=1).contiguous(memory_format=torch.channels_last)
