"""Two ways past the CPU convolution ceiling that were measured and not taken, at VGG's shapes.

    .venv/bin/python bench/kernel_probes.py

1. oneDNN's bf16 math mode for fp32 tensors (``torch.backends.mkldnn.*.fp32_precision``,
   the CPU counterpart of TF32; AMX on CPUs that have it). Faster, but every product is
   rounded to bf16's 8 bits of mantissa: the study's fp32 CPU runs would no longer be fp32.
2. Leaky ReLU's backward folded into the next layer's backward-data convolution: for a
   stride-1 3x3 convolution that pass *is* a forward convolution with the kernel transposed
   and flipped, so oneDNN can apply the activation's mask as a binary-multiply post-op. It
   saves the separate pass but must read a mask tensor that someone has to write first.

Batch 100, channels_last, the fastest of 30 calls. Prints the figures; asserts nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from gradlab.core.allocator import keep_freed_memory
from gradlab.core.benchmark import _best_time

SHAPES = ((32, 32), (32, 16), (32, 8))  # (channels, side): VGG's three spatial sizes
SLOPE = 0.01
_UNIT = [1, 1]
CPU = torch.device("cpu")


def best_ms(call: Callable[[], object]) -> float:
    """Fastest of 30 calls, in ms (the first call warms up and is never the fastest)."""
    return 1e3 * _best_time(call, CPU, 30)


def set_math(mode: str) -> None:
    """``"ieee"`` (fp32 products) or ``"bf16"`` (fp32 tensors, bf16 products)."""
    torch.backends.mkldnn.conv.fp32_precision = mode
    torch.backends.mkldnn.matmul.fp32_precision = mode


def _activation(channels: int, side: int) -> torch.Tensor:
    return torch.randn(100, channels, side, side).contiguous(memory_format=torch.channels_last)


def _kernel(channels: int) -> torch.Tensor:
    weight = 0.05 * torch.randn(channels, channels, 3, 3)
    return weight.contiguous(memory_format=torch.channels_last)


def conv_rate(channels: int, side: int) -> tuple[float, float]:
    """GFLOP/s of one 3x3 convolution in the current math mode, and its largest error
    relative to the output's largest value (against a float64 reference)."""
    x, w = _activation(channels, side), _kernel(channels)
    exact = F.conv2d(x.double(), w.double(), padding=1)
    error = ((F.conv2d(x, w, padding=1) - exact).abs().max() / exact.abs().max()).item()
    flop = 2 * 100 * channels * channels * 9 * side * side
    return flop / best_ms(lambda: F.conv2d(x, w, padding=1)) / 1e6, error


def math_mode_rates() -> None:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for mode in ("ieee", "bf16"):
        set_math(mode)
        print(f"math {mode}: torch.mm {2 * 2048**3 / best_ms(lambda: a @ b) / 1e6:.0f} GFLOP/s")
        for channels, side in SHAPES:
            rate, error = conv_rate(channels, side)
            print(f"  conv {channels:3d}ch {side:2d}x{side:<2d}: {rate:4.0f} GFLOP/s, "
                  f"max relative error {error:.1e}")
    set_math("ieee")


def folded_backward(channels: int, side: int) -> str:
    """Backward data + leaky ReLU backward, separate and folded, at one shape."""
    grad, out, weight = _activation(channels, side), _activation(channels, side), _kernel(channels)
    flipped = weight.transpose(0, 1).flip(2, 3).contiguous(memory_format=torch.channels_last)

    def separate() -> torch.Tensor:
        grad_x = torch.ops.aten.convolution_backward(
            grad, out, weight, None, _UNIT, _UNIT, _UNIT, False, [0, 0], 1,
            [True, False, False])[0]
        return torch.ops.aten.leaky_relu_backward(grad_x, out, SLOPE, True)

    ones = torch.ones_like(out)

    def mask() -> torch.Tensor:  # the cheapest pass found that writes it: one read, one write
        return torch.ops.aten.leaky_relu_backward(ones, out, SLOPE, True)

    factor = mask()

    def folded() -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            grad, factor, flipped, None, _UNIT, _UNIT, _UNIT, 1, "mul", None, None, [], None)

    return (f"  {channels:3d}ch {side:2d}x{side:<2d}: separate {best_ms(separate):.2f} ms, "
            f"folded {best_ms(folded):.2f} ms + mask {best_ms(mask):.2f} ms, "
            f"bit-identical: {torch.equal(separate(), folded())}")


def main() -> None:
    keep_freed_memory()
    torch.manual_seed(0)
    math_mode_rates()
    print("leaky ReLU backward folded into the backward-data convolution:")
    for channels, side in SHAPES:
        print(folded_backward(channels, side))


if __name__ == "__main__":
    main()
