"""Where a run or benchmark ran: versions, device and threads (stored with every result)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked, not guessed."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported (use cpu, cuda, cuda:N or auto)")
    return resolved


def describe_environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "gradlab": _gradlab_version(),
        "torch": torch.__version__.split("+")[0],
        "torch_build": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["device_name"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
    return info


def _gradlab_version() -> str:
    try:
        return metadata.version("gradlab")
    except metadata.PackageNotFoundError:
        return "unknown"
