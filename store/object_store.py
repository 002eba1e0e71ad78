"""What a place for checkpoint bytes must do: put, get, list, delete objects by key.

Three places implement it (``object_store_database``, ``object_store_filesystem``,
``object_store_s3``); ``checkpoint_store`` builds on it. Bytes in, bytes out: no torch here.

Every ``put`` is atomic for readers: ``get`` returns the whole object written by a finished
``put`` or raises ``ObjectMissingError``, never a part of one, even when the writer was killed
in the middle (a transaction, a rename, a single S3 PUT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ObjectMissingError(LookupError):
    """No object under this key (never written, deleted, or its write never finished)."""


class ObjectStore(Protocol):
    #: written into each checkpoint reference: "database", "filesystem" or "s3"
    kind: str

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably (replacing an object of the same key)."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``ObjectMissingError`` if there is none."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Keys of the finished objects under ``prefix``, sorted."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; keys that do not exist are ignored."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under ``prefix``, including what killed writers left behind."""
        ...


def check_key(key: str) -> str:
    """A key is a relative path of plain parts (``run-id/000003-1.ckpt``): nothing that could
    climb out of a folder or bucket prefix."""
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key
