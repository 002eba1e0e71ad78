"""Checkpoint objects as files under a folder: a local disk, or a volume every worker mounts
(NFS, a Kubernetes ReadWriteMany claim).

A put writes a hidden temporary file beside the target, fsyncs it, renames it over the target
(atomic on POSIX) and fsyncs the folder: a writer killed at any point leaves either the old
object or the new one, plus at most a hidden temporary file that ``delete_prefix`` removes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from gradlab.store.object_store import ObjectMissingError, check_key

TEMPORARY_PREFIX = ".partial-"


class FilesystemObjectStore:
    kind = "filesystem"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{TEMPORARY_PREFIX}{path.name}.{uuid.uuid4().hex}")
        try:
            with partial.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(f"no object {key!r} under {self.root}") from None

    def keys(self, prefix: str) -> list[str]:
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith(TEMPORARY_PREFIX):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if prefix.endswith("/"):
            shutil.rmtree(self.root / check_key(prefix.rstrip("/")), ignore_errors=True)
            return
        self.delete(self.keys(prefix))


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
