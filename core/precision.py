"""The precision a run computes in: the spec's choice (``auto``, ``fp32``, ``bf16``) resolved on a
device, and the autocast that applies it.

``auto`` is bf16 autocast on CUDA and on CPUs whose bf16 math is fast (oneDNN's bf16 kernels
on AMX or AVX512-BF16 units, as torch itself reports them: ``cpu_has_fast_bf16``, the one
place a test steers), fp32 elsewhere. Under bf16 autocast the convolutions and linear layers
compute in bf16 (8 bits of mantissa, fp32's exponent range); parameters, gradients, optimiser
state and the loss stay fp32, so gradient-flow capture and checkpoints are unchanged. fp32
means no autocast at all: today's numbers bit for bit.

A run resumed from a checkpoint keeps the precision it started in (the checkpoint's identity
names it): ``auto`` never switches precision in the middle of a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal, cast

import torch

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16) and oneDNN, the
    library PyTorch's CPU convolutions run on, has bf16 kernels for it (torch's own checks;
    no CPU model list). Without the units oneDNN emulates bf16, slower than fp32."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        return False
    onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if onednn is None or not onednn():
        return False
    units = [getattr(torch.cpu, name, None)
             for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and bool(check()) for check in units)


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """``fp32`` or ``bf16`` for the spec's ``choice`` on ``device`` (see the module docstring)."""
    if choice in PRECISIONS:
        return choice
    if choice != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got {choice!r}")
    if device.type == "cuda" or cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def checkpoint_precision(payload: dict[str, Any], device: torch.device) -> Precision:
    """The precision a checkpoint's run trained in; checkpoints from before precision was
    recorded trained the way that code did: bf16 on CUDA, fp32 on the CPU."""
    stored = payload.get("identity", {}).get("precision")
    if stored in PRECISIONS:
        return cast(Precision, stored)
    return "bf16" if device.type == "cuda" else "fp32"


def autocast_for(precision: Precision, device: torch.device,
                 ) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """The context the forward runs in: bf16 autocast on the device, or none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext

    def autocast() -> contextlib.AbstractContextManager[None]:
        return torch.autocast(device.type, dtype=torch.bfloat16)

    return autocast
