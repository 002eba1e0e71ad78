"""Fetch the official CIFAR archives (the Python pickles) into a data folder.

Which archive, and its MD5, are what torchvision's ``CIFAR100``/``CIFAR10`` datasets declare;
the MD5 is computed with torchvision's own ``calculate_md5``. The fetching and unpacking are
ours, because torchvision's ``download_url`` and ``extract_archive`` would lose what this module
guarantees:

- resumable: the archive is written to ``<name>.part`` in the data folder; a download that
  breaks off continues from there with an HTTP Range request (at once, while each try brings
  bytes, and on the next command after a crash), where torchvision starts over;
- checked before use: the MD5 of the whole archive must be the published one before anything
  is extracted; a mismatched file is deleted (never left to look complete);
- extracted safely, member by member refusing paths that would leave the folder, into a
  staging folder moved into place only once complete, so no half folder is ever taken as data.

The source is overridable (``GRADLAB_CIFAR_URL``: the folder URL of a mirror holding the same
archives), which is how the tests serve an archive from 127.0.0.1.
"""

from __future__ import annotations

import http.client
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from gradlab.settings import get_worker_settings

# progress(bytes done, bytes in all or 0 when the server does not say)
Progress = Callable[[int, int], None]
CHUNK_BYTES = 1 << 20
# Seconds without a byte before a connection counts as broken (then resumed).
TIMEOUT_SECONDS = 60
# Immediate resumptions of a download that broke off, while each try brings more bytes.
RESUME_ATTEMPTS = 5


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    folder: str

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name or f"{self.folder}.tar.gz"


class DownloadError(RuntimeError):
    """The archive could not be fetched, or it is not the archive we expected."""


def official_archive(dataset: str) -> Archive:
    """The archive of ``dataset`` (cifar100, cifar10) as torchvision's dataset declares it."""
    from torchvision.datasets import CIFAR10, CIFAR100  # type: ignore[import-untyped]

    declared = {"cifar100": CIFAR100, "cifar10": CIFAR10}
    if dataset not in declared:
        raise ValueError(f"dataset must be one of {sorted(declared)}, got {dataset!r}")
    source = declared[dataset]
    return Archive(source.url, source.tgz_md5, source.base_folder)


def archive_for(dataset: str) -> Archive:
    """The official archive, fetched from ``GRADLAB_CIFAR_URL`` when that is set."""
    official = official_archive(dataset)
    mirror = get_worker_settings().cifar_url
    if not mirror:
        return official
    return replace(official, url=f"{mirror.rstrip('/')}/{official.filename}")


def download_cifar(data_dir: Path, dataset: str = "cifar100", *,
                   archive: Archive | None = None,
                   progress: Progress | None = None) -> Path:
    """Download, check and extract ``dataset`` into ``data_dir``; returns the extracted folder.

    Does nothing when the folder already exists. ``archive`` overrides :func:`archive_for`.
    """
    archive = archive or archive_for(dataset)
    target = data_dir / archive.folder
    if target.is_dir():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    part = data_dir / f"{archive.filename}.part"
    fetch(archive.url, part, progress)
    _verify(part, archive)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extracting-") as tmp:
        staging = Path(tmp) / "extract"
        _safe_extract(part, staging)
        if not (staging / archive.folder).is_dir():
            raise DownloadError(f"{archive.url} does not contain {archive.folder}/")
        # Moved into place only once complete: an interrupted extraction leaves no half folder.
        shutil.move(str(staging / archive.folder), target)
    part.unlink()
    return target


@contextmanager
def download_progress(show: bool, description: str) -> Iterator[Progress | None]:
    """A progress callback drawing gradlab's download bar on the terminal (None: no bar); the
    bar appears with the first bytes, so a server that cannot be reached draws none."""
    if not show:
        yield None
        return
    from gradlab.science.progress_bar import download_bar

    bar = download_bar()
    task = None

    def advance(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(f"downloading {description}", total=None)
        bar.update(task, completed=done, total=total or None)

    try:
        yield advance
    finally:
        if task is not None:
            bar.stop()


def fetch(url: str, part: Path, progress: Progress | None = None) -> None:
    """Download ``url`` into ``part``, continuing what ``part`` already holds; a connection
    that breaks off is resumed at once while each try brings more bytes."""
    for attempt in range(1, RESUME_ATTEMPTS + 1):
        before = _size(part)
        try:
            _fetch_once(url, part, progress)
            return
        except _BrokenOff as broken:
            if _size(part) == before or attempt == RESUME_ATTEMPTS:
                total = f"{broken.total:,}" if broken.total else "?"
                raise DownloadError(
                    f"the download of {url} broke off at {broken.done:,} of {total} bytes "
                    f"({broken.reason}); run the command again to continue from there "
                    f"({part} keeps what arrived)"
                ) from None


class _BrokenOff(Exception):
    def __init__(self, done: int, total: int, reason: str) -> None:
        super().__init__(reason)
        self.done, self.total, self.reason = done, total, reason


def _fetch_once(url: str, part: Path, progress: Progress | None) -> None:
    have = _size(part)
    headers = {"User-Agent": "gradlab"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            return  # nothing left to send: the part is whole (the checksum will tell)
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # refused, no route, DNS, timeout
        raise DownloadError(_unreachable(url, part.parent, exc)) from None
    resumed = have > 0 and _range_start(response) == have
    done = have if resumed else 0
    length = response.headers.get("Content-Length")
    total = done + int(length) if length else 0
    # Errors writing the file (a full disk) are the caller's to report, not a broken download.
    with response, part.open("ab" if resumed else "wb") as out:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                raise _BrokenOff(done, total, str(exc) or type(exc).__name__) from None
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if total and done < total:
        raise _BrokenOff(done, total, "the connection closed early")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """Where a 206 answer's body starts (``Content-Range: bytes START-END/TOTAL``)."""
    content_range = response.headers.get("Content-Range", "")
    if response.status != 206 or not content_range.startswith("bytes "):
        return None  # the server sent the whole file: start over
    start = content_range.removeprefix("bytes ").split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _unreachable(url: str, data_dir: Path, exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return (
        f"could not download {url} ({reason}). Without internet access here: fetch that file "
        f"elsewhere and extract it into {data_dir.resolve()}, or point --data-dir (or "
        "GRADLAB_DATA_DIR) at a folder that holds the data; with a mirror, set "
        "GRADLAB_CIFAR_URL to its folder URL"
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _verify(part: Path, archive: Archive) -> None:
    from torchvision.datasets.utils import calculate_md5  # type: ignore[import-untyped]

    digest = calculate_md5(part)
    if digest != archive.md5:
        part.unlink()  # never left to look like a finished download
        raise DownloadError(
            f"{archive.url}: MD5 {digest} differs from the published {archive.md5}; the file "
            "is deleted and nothing was extracted (a mirror in GRADLAB_CIFAR_URL must serve "
            "the official archive)"
        )


def _safe_extract(archive: Path, destination: Path) -> None:
    destination.mkdir(parents=True)
    root = destination.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                resolved = (destination / member.name).resolve()
                if not resolved.is_relative_to(root) or not (member.isfile() or member.isdir()):
                    raise DownloadError(f"refusing unsafe archive member {member.name!r}")
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive} is not a readable tar.gz archive: {exc}") from None
