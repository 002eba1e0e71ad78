"""CIFAR-100 / CIFAR-10 on disk -> uint8 arrays in memory, and the seed framework's split.

Two layouts are read:

- npz (as in ``../shared/data/cifar100``): ``train.npz`` / ``test.npz`` with ``images`` uint8
  [N, 32, 32, 3] and ``fine_labels`` (CIFAR-100) or ``labels`` (CIFAR-10);
- the official Python pickles (``cifar-100-python/{train,test}``,
  ``cifar-10-batches-py/{data_batch_1..5,test_batch}``), as torchvision downloads them.

The split is the seed framework's: ``RandomState(0).permutation(50000)``, first 47,500 train,
last 2,500 validation, fixed whatever the run's seed; test is the official 10,000.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from gradlab.core.data_download import DownloadError, download_cifar, download_progress
from gradlab.science.spec import DataSpec

DATA_DIR_ENV = "GRADLAB_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")
DATASETS = ("cifar100", "cifar10")
NUM_OFFICIAL_TRAIN = 50_000
NUM_TRAIN = 47_500
SPLIT_SEED = 0
_HOW_TO_GET = (
    "Get the data with `gradlab data download --data-dir DIR` (needs internet; `gradlab train` "
    f"and `gradlab study run` do it by themselves), or point --data-dir / {DATA_DIR_ENV} at a "
    "folder holding train.npz + test.npz or the official cifar-100-python/ "
    "(cifar-10-batches-py/) folder."
)


class DataNotFoundError(FileNotFoundError):
    """The data set is not where we looked; the message names every path tried."""


class DataFormatError(ValueError):
    """A data file exists but does not hold what a CIFAR file must."""


@dataclass(frozen=True)
class CifarArrays:
    """The official train (50,000) and test images: uint8 NHWC and int64 labels."""

    dataset: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    @property
    def num_classes(self) -> int:
        return 100 if self.dataset == "cifar100" else 10


def random_cifar(seed: int = 0) -> CifarArrays:
    """Random CIFAR-100-shaped arrays (official sizes, labels 0-99): enough for a training
    loop's mechanics and for benchmarks, nothing to learn."""
    rng = np.random.default_rng(seed)
    return CifarArrays(
        dataset="cifar100",
        train_images=rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
        train_labels=rng.integers(0, 100, 50_000).astype(np.int64),
        test_images=rng.integers(0, 256, (1_000, 32, 32, 3), dtype=np.uint8),
        test_labels=rng.integers(0, 100, 1_000).astype(np.int64),
        source="synthetic",
    )


@dataclass(frozen=True)
class SplitArrays:
    """Train / validation / test after the seed split and the spec's limits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def resolve_data_dir(explicit: str | Path | None, *, must_exist: bool = True) -> Path:
    """The data folder: the flag, else ``GRADLAB_DATA_DIR``, else ``./data``.

    Raises DataNotFoundError naming the path and where it came from when it does not exist
    (``must_exist=False`` is for a download, which creates it).
    """
    if explicit is not None and str(explicit) != "":
        path, origin = Path(explicit), "--data-dir"
    elif os.environ.get(DATA_DIR_ENV):
        path, origin = Path(os.environ[DATA_DIR_ENV]), DATA_DIR_ENV
    else:
        path, origin = DEFAULT_DATA_DIR, "the default ./data"
    path = path.expanduser()
    if must_exist and not path.is_dir():
        raise DataNotFoundError(
            f"data folder {path.resolve()} (from {origin}) does not exist. {_HOW_TO_GET}"
        )
    return path


def ensure_data(data_dir: str | Path | None, dataset: str = "cifar100", *, download: bool,
                show_progress: bool = False) -> Path:
    """The data folder (:func:`resolve_data_dir`) once it holds ``dataset`` in either layout.

    When it holds none, ``download`` fetches the official archive into it (created if need
    be; ``show_progress``: a progress bar on the terminal); otherwise DataNotFoundError names
    every path tried. Raises DownloadError (:mod:`gradlab.core.data_download`) when fetching
    fails: nothing is then left that would be taken for the data.
    """
    _check_dataset(dataset)
    root = resolve_data_dir(data_dir, must_exist=not download)
    loader, tried = _locate(root, dataset)
    if loader is not None:
        return root
    if not download:
        raise DataNotFoundError(_not_found(root, dataset, tried))
    try:
        with download_progress(show_progress, f"{dataset} into {root}") as progress:
            download_cifar(root, dataset, progress=progress)
    except (DownloadError, OSError) as exc:  # OSError: the folder cannot be written
        raise DownloadError(f"no {dataset} data in {root.resolve()} (tried: {', '.join(tried)}) "
                            f"and fetching it failed: {exc}") from None
    if _locate(root, dataset)[0] is None:  # e.g. an incomplete folder was already there
        raise DataNotFoundError(_not_found(root, dataset, tried))
    return root


_cache: dict[tuple[str, str], CifarArrays] = {}
_cache_lock = threading.Lock()


def load_cifar(data_dir: Path, dataset: str = "cifar100") -> CifarArrays:
    """Load a data set from ``data_dir`` (either layout), cached per process."""
    _check_dataset(dataset)
    key = (str(Path(data_dir).resolve()), dataset)
    with _cache_lock:
        if key not in _cache:
            loader, tried = _locate(Path(data_dir), dataset)
            if loader is None:
                raise DataNotFoundError(_not_found(Path(data_dir), dataset, tried))
            _cache[key] = loader()
        return _cache[key]


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def _not_found(data_dir: Path, dataset: str, tried: list[str]) -> str:
    return (f"no {dataset} data found in {data_dir.resolve()}; tried: {', '.join(tried)}. "
            f"{_HOW_TO_GET}")


def _locate(data_dir: Path, dataset: str) -> tuple[Callable[[], CifarArrays] | None, list[str]]:
    """How to load ``dataset`` from ``data_dir`` (None when no layout is there), and every
    path tried."""
    tried: list[str] = []
    label_key = "fine_labels" if dataset == "cifar100" else "labels"
    for folder in (data_dir, data_dir / dataset):
        train, test = folder / "train.npz", folder / "test.npz"
        tried.append(str(train))
        if train.is_file() and test.is_file() and _npz_has(train, label_key):
            return partial(_from_npz, train, test, label_key, dataset), tried
    pickle_dir = data_dir / ("cifar-100-python" if dataset == "cifar100" else "cifar-10-batches-py")
    for folder in (pickle_dir, data_dir):
        if dataset == "cifar100":
            train_files, test_file = [folder / "train"], folder / "test"
        else:
            train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
            test_file = folder / "test_batch"
        tried.append(str(train_files[0]))
        if all(f.is_file() for f in train_files) and test_file.is_file():
            return partial(_from_pickles, train_files, test_file, label_key, dataset), tried
    return None, tried


def _npz_has(path: Path, key: str) -> bool:
    # A CIFAR-100 npz in the same folder must not be taken for CIFAR-10 (and vice versa).
    try:
        with np.load(path) as archive:
            return key in archive.files
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path} is not a readable npz archive: {exc}") from exc


def _from_npz(train: Path, test: Path, label_key: str, dataset: str) -> CifarArrays:
    arrays = []
    for path in (train, test):
        with np.load(path) as archive:
            if "images" not in archive.files or label_key not in archive.files:
                raise DataFormatError(f"{path} must hold 'images' and '{label_key}' arrays")
            arrays.append((archive["images"], archive[label_key]))
    return _checked(dataset, *arrays[0], *arrays[1], source=str(train.parent))


def _unpickle(path: Path) -> dict[bytes, object]:
    with path.open("rb") as handle:
        try:
            loaded = pickle.load(handle, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataFormatError(f"{path} is not a CIFAR pickle: {exc}") from exc
    if not isinstance(loaded, dict):
        raise DataFormatError(f"{path} is not a CIFAR pickle: it holds a {type(loaded).__name__}")
    return loaded


def _pickle_part(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        key = label_key.encode()
        if b"data" not in batch or key not in batch:
            raise DataFormatError(f"{path} must hold b'data' and b'{label_key}'")
        # Rows are 3072 bytes: the R, G and B planes of 32x32, row-major (CHW).
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[key]))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _from_pickles(train_files: list[Path], test_file: Path, label_key: str,
                  dataset: str) -> CifarArrays:
    train_images, train_labels = _pickle_part(train_files, label_key)
    test_images, test_labels = _pickle_part([test_file], label_key)
    return _checked(dataset, train_images, train_labels, test_images, test_labels,
                    source=str(test_file.parent))


def _checked(dataset: str, train_images: np.ndarray, train_labels: np.ndarray,
             test_images: np.ndarray, test_labels: np.ndarray, *, source: str) -> CifarArrays:
    classes = 100 if dataset == "cifar100" else 10
    for part, images, labels in (("train", train_images, train_labels),
                                 ("test", test_images, test_labels)):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise DataFormatError(
                f"{source}: {part} images must be uint8 [N, 32, 32, 3], got "
                f"{images.dtype} {list(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise DataFormatError(f"{source}: {part} has {images.shape[0]} images but "
                                  f"{labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise DataFormatError(f"{source}: {part} labels must lie in [0, {classes})")
    return CifarArrays(
        dataset=dataset,
        train_images=np.ascontiguousarray(train_images),
        train_labels=train_labels.astype(np.int64),
        test_images=np.ascontiguousarray(test_images),
        test_labels=test_labels.astype(np.int64),
        source=source,
    )


def seed_split_indices(num_images: int = NUM_OFFICIAL_TRAIN) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of the seed framework: fixed, independent of the run seed."""
    if num_images != NUM_OFFICIAL_TRAIN:
        raise DataFormatError(f"the seed split needs the {NUM_OFFICIAL_TRAIN} official training "
                              f"images; this data set has {num_images}")
    order = np.random.RandomState(SPLIT_SEED).permutation(num_images)
    return order[:NUM_TRAIN], order[NUM_TRAIN:]


def split(data: CifarArrays, spec: DataSpec) -> SplitArrays:
    """The seed split, then the first ``train_limit`` / ``val_limit`` / ``test_limit`` of each."""
    train_idx, val_idx = seed_split_indices(data.train_images.shape[0])
    train_idx = train_idx[: spec.train_limit]
    val_idx = val_idx[: spec.val_limit]
    test_n = data.test_images.shape[0] if spec.test_limit is None else spec.test_limit
    return SplitArrays(
        train_images=data.train_images[train_idx],
        train_labels=data.train_labels[train_idx],
        val_images=data.train_images[val_idx],
        val_labels=data.train_labels[val_idx],
        test_images=data.test_images[:test_n],
        test_labels=data.test_labels[:test_n],
    )
