"""The seed study's VGG family for 3 stages: any depth, optional BatchNorm and residual skips.

Layout (width F everywhere; channels never double), as in the seed framework:

- ``entry``: conv3x3 3->F (no bias) -> BN -> leaky ReLU (the baseline already has this BN).
- ``stage{s}``: ``blocks_per_stage`` processing blocks ``block{b}`` (conv3x3 -> [BN] -> LReLU ->
  conv3x3 -> [BN] -> [+ input] -> LReLU, no conv bias), then ``reduce``: conv3x3 (bias) -> [BN]
  -> LReLU -> avgpool 2x2 -> conv3x3 (bias) -> [BN] -> [+ avgpool(input)] -> LReLU.
- ``head``: global average pool -> ``linear`` (F -> classes, bias).

Module names are the stable layer names used everywhere (gradient flow, database, figures),
and registration order is depth order. Initialisation is PyTorch's default, as in the seed.

Each part's forward is written once, over N same-shaped parts side by side (``forward_many``),
so that a fused pack of N runs (``fused_vgg``) and a model alone (N = 1) are the same code.
Run i's activations occupy channels ``[i*C, (i+1)*C)`` of one tensor ``[B, N*C, h, w]``:

- N convolutions are one grouped convolution (``groups=N``, the runs' weights concatenated
  along the output channels): a grouped convolution never mixes groups;
- N BatchNorms are one over the N*C channels: its statistics are per channel, hence per run;
  the running statistics are written back into each run's own buffers;
- leaky ReLU, pooling and skip sums are element- or channel-wise, unchanged;
- N heads are one batched matmul over ``[N, B, C] x [N, C, classes]``.

With N = 1 each of these is the module's own call (no concatenation, no copy), so a model
alone computes exactly what it always did. The parameters stay the runs' own: they are
concatenated in the forward pass, so autograd hands each run exactly its own gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.core.fused_ops import conv_leaky_relu
from gradlab.science.spec import STAGES, ExperimentSpec

LEAKY_SLOPE = 0.01
# N BatchNorms of the same part, or None for the variant without BatchNorm (same for all N).
Norms = Sequence[nn.BatchNorm2d] | None


def _activation_(fresh: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU in place, on a tensor that nothing saved for backward (a BN output, a skip
    sum): the same numbers, without allocating and writing a second activation-sized tensor."""
    return F.leaky_relu_(fresh, LEAKY_SLOPE)


def _batch_norm(enabled: bool, width: int) -> nn.BatchNorm2d | None:
    return nn.BatchNorm2d(width) if enabled else None


def _norms(found: Sequence[nn.BatchNorm2d | None]) -> Norms:
    """The parts' BatchNorms, or None when the variant has none (the parts have one shape)."""
    return None if found[0] is None else cast(Sequence[nn.BatchNorm2d], found)


def _conv(convs: Sequence[nn.Conv2d], x: torch.Tensor) -> torch.Tensor:
    """N convolutions side by side: one grouped convolution; one is the module's own call."""
    if len(convs) == 1:
        out: torch.Tensor = convs[0](x)
        return out
    first = convs[0]
    weight = torch.cat([c.weight for c in convs])
    bias = None if first.bias is None else torch.cat([cast(torch.Tensor, c.bias) for c in convs])
    return F.conv2d(x, weight, bias, first.stride, first.padding, first.dilation, len(convs))


def _norm(norms: Sequence[nn.BatchNorm2d], x: torch.Tensor) -> torch.Tensor:
    """N BatchNorms over the stacked channels, running statistics back into each one's
    buffers; one is the module's own call."""
    if len(norms) == 1:
        out: torch.Tensor = norms[0](x)
        return out
    first, count = norms[0], len(norms)
    running = [cast(torch.Tensor, n.running_mean) for n in norms]
    variance = [cast(torch.Tensor, n.running_var) for n in norms]
    mean, var = torch.cat(running), torch.cat(variance)
    out = F.batch_norm(x, mean, var, torch.cat([n.weight for n in norms]),
                       torch.cat([n.bias for n in norms]), first.training,
                       first.momentum or 0.0, first.eps)
    if first.training:
        # F.batch_norm updated the concatenated copies in place; each run owns its slice.
        with torch.no_grad():
            torch._foreach_copy_(running, list(mean.chunk(count)))
            torch._foreach_copy_(variance, list(var.chunk(count)))
            torch._foreach_add_([cast(torch.Tensor, n.num_batches_tracked) for n in norms], 1)
    return out


def _conv_norm_act(convs: Sequence[nn.Conv2d], norms: Norms, x: torch.Tensor) -> torch.Tensor:
    """conv -> [BN] -> leaky ReLU. Without BN one conv is one fused call on the CPU (same
    numbers); N convs activate out of place, since leaky ReLU's backward needs its input."""
    if norms is not None:
        return _activation_(_norm(norms, _conv(convs, x)))
    if len(convs) == 1:
        return conv_leaky_relu(convs[0], x, LEAKY_SLOPE)
    return F.leaky_relu(_conv(convs, x), LEAKY_SLOPE)


def _conv_norm_add_act(convs: Sequence[nn.Conv2d], norms: Norms, x: torch.Tensor,
                       skip: torch.Tensor) -> torch.Tensor:
    """conv -> [BN] -> + skip -> leaky ReLU. The sum goes into the conv / BN output, which
    neither backward needs."""
    out = _conv(convs, x)
    return _activation_((out if norms is None else _norm(norms, out)).add_(skip))


class _SideBySide(nn.Module):
    """Layers that N same-shaped runs compute side by side: ``forward_many`` takes one member
    per run; ``forward`` is the pack of one, so a model alone and a fused pack run one code.
    (Head and VGG override ``forward`` to drop the run axis from their logits.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self).forward_many([self], x)

    @staticmethod
    def forward_many(members: Sequence[Any], x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Entry(_SideBySide):
    """Entry conv (no bias) with its BatchNorm, present in every variant."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    @staticmethod
    def forward_many(entries: Sequence[Entry], x: torch.Tensor) -> torch.Tensor:
        return _conv_norm_act([e.conv for e in entries], [e.bn for e in entries], x)


class _ConvPair(_SideBySide):
    """Two 3x3 convolutions at constant width (``conv1``, ``conv2``), each followed by its
    BatchNorm (``bn1``, ``bn2``) in the BatchNorm variant: the layers of both block kinds,
    whose convs have a bias or not (``conv_bias``) and whose skip connection is on or off."""

    conv_bias: ClassVar[bool]

    def __init__(self, width: int, batch_norm: bool, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        # Attribute order = registration order = depth order (conv1, bn1, conv2, bn2).
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=self.conv_bias)
        self.bn1 = _batch_norm(batch_norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=self.conv_bias)
        self.bn2 = _batch_norm(batch_norm, width)


def _first(pairs: Sequence[_ConvPair], x: torch.Tensor) -> torch.Tensor:
    """conv1 -> [bn1] -> leaky ReLU, N blocks side by side."""
    return _conv_norm_act([p.conv1 for p in pairs], _norms([p.bn1 for p in pairs]), x)


def _second(pairs: Sequence[_ConvPair], x: torch.Tensor,
            skip: torch.Tensor | None) -> torch.Tensor:
    """conv2 -> [bn2] -> [+ skip] -> leaky ReLU, N blocks side by side."""
    convs, norms = [p.conv2 for p in pairs], _norms([p.bn2 for p in pairs])
    if skip is None:
        return _conv_norm_act(convs, norms, x)
    return _conv_norm_add_act(convs, norms, x, skip)


class ProcessingBlock(_ConvPair):
    """Two bias-free 3x3 convs at constant shape; identity skip when residual."""

    conv_bias = False

    @staticmethod
    def forward_many(blocks: Sequence[ProcessingBlock], x: torch.Tensor) -> torch.Tensor:
        return _second(blocks, _first(blocks, x), x if blocks[0].skip else None)


class ReductionBlock(_ConvPair):
    """conv (bias) -> avgpool 2x2 -> conv (bias); optional avg-pooled identity skip."""

    conv_bias = True

    @staticmethod
    def forward_many(blocks: Sequence[ReductionBlock], x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(_first(blocks, x), 2, 2)
        # Shapes differ only spatially (channels stay F), so pooling the identity matches them.
        return _second(blocks, out, F.avg_pool2d(x, 2, 2) if blocks[0].skip else None)


class Stage(_SideBySide):
    def __init__(self, width: int, blocks: int, batch_norm: bool, residual: bool,
                 reduction_skip: bool) -> None:
        super().__init__()
        self.block_names = tuple(f"block{b}" for b in range(blocks))
        for name in self.block_names:
            self.add_module(name, ProcessingBlock(width, batch_norm, residual))
        self.reduce = ReductionBlock(width, batch_norm, reduction_skip)

    @staticmethod
    def forward_many(stages: Sequence[Stage], x: torch.Tensor) -> torch.Tensor:
        for name in stages[0].block_names:
            x = ProcessingBlock.forward_many([getattr(s, name) for s in stages], x)
        return ReductionBlock.forward_many([s.reduce for s in stages], x)


class Head(_SideBySide):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_many([self], x).squeeze(0)

    @staticmethod
    def forward_many(heads: Sequence[Head], x: torch.Tensor) -> torch.Tensor:
        """``[B, N*C, h, w]`` -> logits ``[N, B, classes]``."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # [B, N*C]
        if len(heads) == 1:
            logits: torch.Tensor = heads[0].linear(pooled)
            return logits.unsqueeze(0)
        per_run = pooled.view(pooled.shape[0], len(heads), -1).transpose(0, 1)  # [N, B, C]
        weight = torch.stack([h.linear.weight for h in heads])  # [N, K, C]
        bias = torch.stack([h.linear.bias for h in heads])  # [N, K]
        return torch.baddbmm(bias.unsqueeze(1), per_run, weight.transpose(1, 2))


class VGG(_SideBySide):
    """The seed study's VGG: entry, three stages, head; see the module docstring."""

    def __init__(self, *, blocks_per_stage: int, width: int = 32, num_classes: int = 100,
                 batch_norm: bool = False, residual: bool = False,
                 reduction_skip: str = "avgpool", in_channels: int = 3) -> None:
        super().__init__()
        if reduction_skip not in ("none", "avgpool"):
            raise ValueError(f"reduction_skip must be 'none' or 'avgpool', got {reduction_skip!r}")
        self.entry = Entry(in_channels, width)
        skip = residual and reduction_skip == "avgpool"
        for s in range(STAGES):
            self.add_module(f"stage{s}", Stage(width, blocks_per_stage, batch_norm, residual, skip))
        self.head = Head(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, classes]``."""
        return self.forward_many([self], x).squeeze(0)

    @staticmethod
    def forward_many(models: Sequence[VGG], x: torch.Tensor) -> torch.Tensor:
        """N same-shaped models side by side: ``[B, 3N, H, W]`` (run i's images in channels
        3i..3i+2) -> logits ``[N, B, classes]``."""
        x = Entry.forward_many([m.entry for m in models], x)
        for s in range(STAGES):
            x = Stage.forward_many([m.stage(s) for m in models], x)
        return Head.forward_many([m.head for m in models], x)

    def stage(self, index: int) -> Stage:
        return cast(Stage, getattr(self, f"stage{index}"))

    def gradflow_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(layer name, weight) in depth order: weight tensors only, BN gamma included."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                yield name, cast(nn.Parameter, module.weight)

    def gradflow_layer_names(self) -> list[str]:
        """Layer names in depth order (VGG08: 9; VGG38 without BN: 39)."""
        return [name for name, _ in self.gradflow_parameters()]


def build_model(spec: ExperimentSpec) -> VGG:
    """The model an experiment spec describes (PyTorch default init from the global RNG)."""
    return VGG(
        blocks_per_stage=spec.num_blocks,
        width=spec.width,
        num_classes=spec.num_classes,
        batch_norm=spec.batch_norm,
        residual=spec.residual,
        reduction_skip=spec.reduction_skip,
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

