"""Data: both on-disk layouts, the seed split, limits, missing-data errors, download."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gradlab.core.data import (
    NUM_TRAIN,
    DataFormatError,
    DataNotFoundError,
    load_cifar,
    resolve_data_dir,
    seed_split_indices,
    split,
)
from gradlab.core.data_download import Archive, DownloadError, download_cifar
from gradlab.science.spec import DataSpec
from tests.core.cifar_files import random_cifar, write_official_cifar10, write_official_cifar100


def test_seed_split_sizes_determinism_and_disjointness() -> None:
    train, val = seed_split_indices()
    assert (len(train), len(val)) == (47_500, 2_500)
    again_train, again_val = seed_split_indices()
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert np.array_equal(train, np.random.RandomState(0).permutation(50_000)[:NUM_TRAIN])
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert len(set(train.tolist()) | set(val.tolist())) == 50_000


def test_split_of_real_data_and_limits_take_the_first_n(real_data_dir: Path) -> None:
    data = load_cifar(real_data_dir)
    assert data.train_images.shape == (50_000, 32, 32, 3) and data.test_images.shape[0] == 10_000
    assert data.train_labels.dtype == np.int64 and data.train_labels.max() == 99
    full = split(data, DataSpec())
    assert (len(full.train_labels), len(full.val_labels), len(full.test_labels)) == (
        47_500, 2_500, 10_000)
    small = split(data, DataSpec(train_limit=300, val_limit=40, test_limit=50))
    assert np.array_equal(small.train_images, full.train_images[:300])
    assert np.array_equal(small.val_labels, full.val_labels[:40])
    assert np.array_equal(small.test_images, data.test_images[:50])
    assert load_cifar(real_data_dir) is data  # cached per process


def test_official_cifar100_pickles_load_like_the_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, test = random_cifar(rng, 12, 100), random_cifar(rng, 5, 100)
    write_official_cifar100(tmp_path / "pickles", train, test)
    np.savez(tmp_path / "train.npz", images=train[0], fine_labels=train[1].astype(np.uint8))
    np.savez(tmp_path / "test.npz", images=test[0], fine_labels=test[1].astype(np.uint8))
    from_pickles = load_cifar(tmp_path / "pickles")
    from_npz = load_cifar(tmp_path)
    for arrays in (from_pickles, from_npz):
        assert np.array_equal(arrays.train_images, train[0])  # pixel order survives CHW rows
        assert np.array_equal(arrays.train_labels, train[1])
        assert np.array_equal(arrays.test_images, test[0])
        assert arrays.train_labels.dtype == np.int64


def test_official_cifar10_batches_load_and_are_not_confused_with_cifar100(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    train, test = random_cifar(rng, 10, 10), random_cifar(rng, 4, 10)
    write_official_cifar10(tmp_path, train, test)
    # A CIFAR-100 npz in the same folder must not be read as CIFAR-10.
    c100 = random_cifar(rng, 3, 100)
    np.savez(tmp_path / "train.npz", images=c100[0], fine_labels=c100[1])
    np.savez(tmp_path / "test.npz", images=c100[0], fine_labels=c100[1])
    arrays = load_cifar(tmp_path, "cifar10")
    assert arrays.num_classes == 10
    assert np.array_equal(arrays.train_images, train[0])  # batches concatenated in order
    assert np.array_equal(arrays.test_labels, test[1])


def test_missing_data_names_every_path_tried(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_cifar(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "train.npz") in message
    assert str(tmp_path / "cifar-100-python" / "train") in message
    assert "gradlab data download" in message


def test_corrupt_files_give_a_format_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 28, 28), np.uint8),
             fine_labels=np.zeros(2, np.uint8))
    np.savez(tmp_path / "test.npz", images=np.zeros((2, 28, 28), np.uint8),
             fine_labels=np.zeros(2, np.uint8))
    with pytest.raises(DataFormatError, match=r"uint8 \[N, 32, 32, 3\]"):
        load_cifar(tmp_path)


def test_resolve_data_dir_prefers_flag_then_env_then_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir()
    env.mkdir()
    monkeypatch.setenv("GRADLAB_DATA_DIR", str(env))
    assert resolve_data_dir(flag) == flag
    assert resolve_data_dir(None) == env
    monkeypatch.delenv("GRADLAB_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="default ./data"):
        resolve_data_dir(None)
    assert resolve_data_dir(None, must_exist=False) == Path("data")
    monkeypatch.setenv("GRADLAB_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="GRADLAB_DATA_DIR"):
        resolve_data_dir(None)


def _tar_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def test_download_checks_md5_then_extracts_a_loadable_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, test = random_cifar(rng, 6, 100), random_cifar(rng, 2, 100)
    source = write_official_cifar100(tmp_path / "src", train, test)
    blob = _tar_of(source)
    archive_path = tmp_path / "cifar-100-python.tar.gz"
    archive_path.write_bytes(blob)
    good = Archive(archive_path.as_uri(), hashlib.md5(blob).hexdigest(), "cifar-100-python")
    bad = Archive(archive_path.as_uri(), "0" * 32, "cifar-100-python")

    target = tmp_path / "data"
    with pytest.raises(DownloadError, match="MD5"):
        download_cifar(target, archive=bad)
    assert not (target / "cifar-100-python").exists()  # nothing half-extracted
    folder = download_cifar(target, archive=good)
    assert folder == target / "cifar-100-python"
    assert np.array_equal(load_cifar(target).train_images, train[0])


def test_download_failure_is_a_clear_error(tmp_path: Path) -> None:
    missing = Archive((tmp_path / "absent.tar.gz").as_uri(), "0" * 32, "cifar-100-python")
    with pytest.raises(DownloadError, match="could not download"):
        download_cifar(tmp_path / "data", archive=missing)
