"""Shared fixtures for the core tests: the real CIFAR-100 folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real CIFAR-100 (GRADLAB_DATA_DIR, else the workplace's ../shared/data/cifar100)."""
    candidates = [os.environ.get("GRADLAB_DATA_DIR"), REPO.parent / "shared/data/cifar100"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train.npz").is_file():
            return Path(candidate)
    pytest.skip("real CIFAR-100 not available (set GRADLAB_DATA_DIR)")


@pytest.fixture(scope="session")
def synthetic_cifar():  # type: ignore[no-untyped-def]  # CifarArrays, imported lazily
    """Random images with the official sizes: enough for loop mechanics, nothing to learn."""
    from gradlab.core.data import random_cifar

    return random_cifar()
