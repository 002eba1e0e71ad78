"""Tiny CIFAR data sets in the official on-disk layouts, written on the fly by tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np


def write_official_cifar100(folder: Path, train: tuple[np.ndarray, np.ndarray],
                            test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write ``cifar-100-python/{train,test,meta}`` as the official release lays them out."""
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    for name, (images, labels) in (("train", train), ("test", test)):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # NHWC -> CHW rows
        payload = {b"data": rows, b"fine_labels": labels.tolist(),
                   b"coarse_labels": (labels // 5).tolist(), b"filenames": [b"x"] * len(labels)}
        (root / name).write_bytes(pickle.dumps(payload))
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c"] * 100}))
    return root


def write_official_cifar10(folder: Path, train: tuple[np.ndarray, np.ndarray],
                           test: tuple[np.ndarray, np.ndarray]) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    images, labels = train
    parts = np.array_split(np.arange(len(labels)), 5)
    batches = [(f"data_batch_{i + 1}", images[p], labels[p]) for i, p in enumerate(parts)]
    for name, imgs, labs in [*batches, ("test_batch", *test)]:
        rows = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)
        (root / name).write_bytes(pickle.dumps({b"data": rows, b"labels": labs.tolist()}))
    return root


def random_cifar(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, classes, n).astype(np.int64))


def tar_gz_of(folder: Path) -> bytes:
    """``folder`` as a .tar.gz holding ``folder.name/...``, as the official archive does."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def write_seed_sized_cifar100(folder: Path, test_images: int = 100) -> Path:
    """``cifar-100-python/`` with the 50,000 training images the seed split needs (blank, so
    the archive compresses to little) and a few test images: enough to train on, nothing to
    learn."""
    root = folder / "cifar-100-python"
    root.mkdir(parents=True)
    for name, count in (("train", 50_000), ("test", test_images)):
        labels = [i % 100 for i in range(count)]
        payload = {b"data": np.zeros((count, 3 * 32 * 32), np.uint8), b"fine_labels": labels,
                   b"coarse_labels": [label // 5 for label in labels],
                   b"filenames": [b"x"] * count}
        with (root / name).open("wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c"] * 100}))
    return root
