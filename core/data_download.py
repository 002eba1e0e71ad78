"""Fetch the official CIFAR archives (the Python pickles) into a data folder.

The archive is checked against its published MD5 before anything is extracted, and it is
extracted member by member refusing paths that would leave the folder.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    folder: str


ARCHIVES: dict[str, Archive] = {
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
}


class DownloadError(RuntimeError):
    """The archive could not be fetched, or it is not the archive we expected."""


def download_cifar(data_dir: Path, dataset: str = "cifar100", *,
                   archive: Archive | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Path:
    """Download and extract ``dataset`` into ``data_dir``; returns the extracted folder.

    Does nothing when the folder already exists. ``archive`` overrides the official source
    (tests use a local ``file://`` archive).
    """
    if archive is None:
        if dataset not in ARCHIVES:
            raise ValueError(f"dataset must be one of {sorted(ARCHIVES)}, got {dataset!r}")
        archive = ARCHIVES[dataset]
    target = data_dir / archive.folder
    if target.is_dir():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        path = Path(tmp) / "archive.tar.gz"
        _fetch(archive.url, path, progress)
        digest = _md5(path)
        if digest != archive.md5:
            raise DownloadError(f"{archive.url}: MD5 {digest} differs from the published "
                                f"{archive.md5}; not extracting")
        staging = Path(tmp) / "extract"
        _safe_extract(path, staging)
        if not (staging / archive.folder).is_dir():
            raise DownloadError(f"{archive.url} does not contain {archive.folder}/")
        # Move into place only once complete, so an interrupted download leaves no half folder.
        shutil.move(str(staging / archive.folder), target)
    return target


def _fetch(url: str, path: Path, progress: Callable[[int, int], None] | None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except OSError as exc:  # URLError and socket errors are OSErrors
        raise DownloadError(f"could not download {url}: {exc}") from exc


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extract(archive: Path, destination: Path) -> None:
    destination.mkdir(parents=True)
    root = destination.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            resolved = (destination / member.name).resolve()
            if not resolved.is_relative_to(root) or not (member.isfile() or member.isdir()):
                raise DownloadError(f"refusing unsafe archive member {member.name!r}")
        tar.extractall(destination, filter="data")
