"""The fast paths (oneDNN conv + leaky ReLU, in-place activations) change no number.

The reference below writes each VGG variant out with plain, out-of-place PyTorch ops, the way
the seed framework did; the model under test must give bit-identical outputs, BN running
statistics and gradients, on the CPU in fp32 where the fused path runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gradlab.core import fused_ops
from gradlab.core.architectures import LEAKY_SLOPE, VGG, build_model
from gradlab.science.spec import ExperimentSpec


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def _opt_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return x if norm is None else norm(x)


def reference_forward(model: VGG, x: torch.Tensor) -> torch.Tensor:
    """The architecture of ``gradlab.core.architectures``, op by op, nothing fused or in place."""
    x = _act(model.entry.bn(model.entry.conv(x)))
    for stage in (model.stage0, model.stage1, model.stage2):
        for name, block in stage.named_children():
            pooled = name == "reduce"
            out = _act(_opt_norm(block.bn1, block.conv1(x)))
            if pooled:
                out = F.avg_pool2d(out, 2, 2)
            out = _opt_norm(block.bn2, block.conv2(out))
            if block.skip:  # identity (residual) or avg-pooled identity (reduction)
                out = out + (F.avg_pool2d(x, 2, 2) if pooled else x)
            x = _act(out)
    return model.head.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize(("batch_norm", "residual"),
                         [(False, False), (True, False), (False, True), (True, True)])
def test_model_matches_the_unfused_reference_bit_for_bit(batch_norm: bool, residual: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ExperimentSpec(depth=14, batch_norm=batch_norm, residual=residual))
    model = model.to(memory_format=torch.channels_last).train()
    reference = copy.deepcopy(model)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (8,))

    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference_forward(reference, x), y).backward()

    for (name, got), (_, want) in zip(model.named_parameters(), reference.named_parameters(),
                                      strict=True):
        assert got.grad is not None and torch.equal(got.grad, want.grad), name
    for (name, got), (_, want) in zip(model.named_buffers(), reference.named_buffers(),
                                      strict=True):
        assert torch.equal(got, want), name
    model.eval()
    reference.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), reference_forward(reference, x))


def test_plain_convs_take_the_fused_op_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    if not fused_ops.fusion_available():
        pytest.skip("this PyTorch build has no oneDNN fused convolution")
    calls = []
    real = fused_ops._POINTWISE

    def counting(*args: object) -> torch.Tensor:
        calls.append(args[7])  # the post-op's name
        return real(*args)  # type: ignore[misc]

    monkeypatch.setattr(fused_ops, "_POINTWISE", counting)
    model = build_model(ExperimentSpec(depth=8)).train()
    model(torch.randn(2, 3, 32, 32))
    # VGG08 without BN: all six stage convs are conv -> leaky ReLU; the entry has its BN.
    assert calls == ["leaky_relu"] * 6


def test_conv_leaky_relu_falls_back_where_fusion_does_not_apply() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, stride=2)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    want = F.leaky_relu(conv.double()(x), 0.1)
    assert torch.equal(fused_ops.conv_leaky_relu(conv, x, 0.1), want)
