"""Seeding and the complete random state of a run (saved in checkpoints, restored on resume).

A run draws from: the global torch RNG (model initialisation), one dedicated CPU generator
for data order and augmentation, and on CUDA the device RNG. NumPy and Python ``random`` are
seeded and saved too, so code added later cannot silently break resume bit-identity.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

# Offsets the data stream from the init stream, so the two never share a sequence.
DATA_STREAM_OFFSET = 0x9E3779B9


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and all CUDA devices), NumPy and Python ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def data_generator(seed: int) -> torch.Generator:
    """The CPU generator that drives shuffling, crops and flips for one run."""
    return torch.Generator().manual_seed((seed + DATA_STREAM_OFFSET) % 2**63)


def capture_rng_state(data: torch.Generator) -> dict[str, Any]:
    """Every RNG state as plain tensors and lists (safe for ``torch.load(weights_only=True)``)."""
    legacy = np.random.get_state(legacy=True)
    if not isinstance(legacy, tuple):  # the global generator is MT19937: always the tuple
        raise TypeError(f"unexpected NumPy RNG state {type(legacy).__name__}")
    kind, keys, pos, has_gauss, cached = legacy
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "data": data.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    # torch.cuda.is_initialized carries no annotations.
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], data: torch.Generator) -> None:
    data.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
