"""The seed study's VGG family for 3 stages: any depth, optional BatchNorm and residual skips.

Layout (width F everywhere; channels never double), as in the seed framework:

- ``entry``: conv3x3 3->F (no bias) -> BN -> leaky ReLU (the baseline already has this BN).
- ``stage{s}``: ``blocks_per_stage`` processing blocks ``block{b}`` (conv3x3 -> [BN] -> LReLU ->
  conv3x3 -> [BN] -> [+ input] -> LReLU, no conv bias), then ``reduce``: conv3x3 (bias) -> [BN]
  -> LReLU -> avgpool 2x2 -> conv3x3 (bias) -> [BN] -> [+ avgpool(input)] -> LReLU.
- ``head``: global average pool -> ``linear`` (F -> classes, bias).

Module names are the stable layer names used everywhere (gradient flow, database, figures),
and registration order is depth order. Initialisation is PyTorch's default, as in the seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.core.fused_ops import conv_leaky_relu
from gradlab.science.spec import STAGES, ExperimentSpec

LEAKY_SLOPE = 0.01


def _activation_(fresh: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU in place, on a tensor that nothing saved for backward (a BN output, a skip
    sum): the same numbers, without allocating and writing a second activation-sized tensor."""
    return F.leaky_relu_(fresh, LEAKY_SLOPE)


def _norm(enabled: bool, width: int) -> nn.Module | None:
    return nn.BatchNorm2d(width) if enabled else None


def _maybe(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def _conv_norm_act(conv: nn.Conv2d, norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """conv -> [BN] -> leaky ReLU; without BN, one fused call on the CPU (same numbers)."""
    if norm is None:
        return conv_leaky_relu(conv, x, LEAKY_SLOPE)
    return _activation_(norm(conv(x)))


def _conv_norm_add_act(conv: nn.Conv2d, norm: nn.Module | None, x: torch.Tensor,
                       skip: torch.Tensor) -> torch.Tensor:
    """conv -> [BN] -> + skip -> leaky ReLU. The sum goes into the conv / BN output, which
    neither backward needs."""
    return _activation_(_maybe(norm, conv(x)).add_(skip))


class Entry(nn.Module):
    """Entry conv (no bias) with its BatchNorm, present in every variant."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activation_(self.bn(self.conv(x)))


class ProcessingBlock(nn.Module):
    """Two bias-free 3x3 convs at constant shape; identity skip when ``residual``."""

    def __init__(self, width: int, batch_norm: bool, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        # Attribute order = registration order = depth order (conv1, bn1, conv2, bn2).
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = _norm(batch_norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = _norm(batch_norm, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _conv_norm_act(self.conv1, self.bn1, x)
        if not self.residual:
            return _conv_norm_act(self.conv2, self.bn2, out)
        return _conv_norm_add_act(self.conv2, self.bn2, out, x)


class ReductionBlock(nn.Module):
    """conv (bias) -> avgpool 2x2 -> conv (bias); optional avg-pooled identity skip."""

    def __init__(self, width: int, batch_norm: bool, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=True)
        self.bn1 = _norm(batch_norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=True)
        self.bn2 = _norm(batch_norm, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(_conv_norm_act(self.conv1, self.bn1, x), 2, 2)
        if not self.skip:
            return _conv_norm_act(self.conv2, self.bn2, out)
        # Shapes differ only spatially (channels stay F), so pooling the identity matches them.
        return _conv_norm_add_act(self.conv2, self.bn2, out, F.avg_pool2d(x, 2, 2))


class Stage(nn.Module):
    def __init__(self, width: int, blocks: int, batch_norm: bool, residual: bool,
                 reduction_skip: bool) -> None:
        super().__init__()
        for b in range(blocks):
            self.add_module(f"block{b}", ProcessingBlock(width, batch_norm, residual))
        self.reduce = ReductionBlock(width, batch_norm, reduction_skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class Head(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VGG(nn.Module):
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
        for module in self.children():
            x = module(x)
        return x

    def gradflow_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(layer name, weight) in depth order: weight tensors only, BN gamma included."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                yield name, module.weight

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

