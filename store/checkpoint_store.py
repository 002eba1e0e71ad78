"""Where a run's checkpoints live, and the one interface the worker and the API use for them.

A checkpoint is bytes (made and read by the training code in ``gradlab.core``; nothing here
imports torch). ``CheckpointStore.save`` writes them to the configured object store under a
key of their own and returns a ``CheckpointRef`` (store, key, epoch, size, SHA-256); the worker
then writes that reference in the same transaction as the epoch's metrics, so the database
never points at bytes that are not there. ``load`` refuses bytes whose size or digest differ
from the reference. Once a newer reference is committed, ``prune`` deletes the run's older
objects; ``delete_run`` deletes them all (the experiment was deleted).

Keys are ``<run id>/<epoch, 6 digits>-<attempt>.ckpt``: an attempt never overwrites another
attempt's object, so a worker that lost its lease cannot clobber the bytes its successor
committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlparse

from sqlalchemy.orm import Session, sessionmaker

from gradlab.settings import ServerSettings
from gradlab.store.object_store import ObjectMissingError, ObjectStore
from gradlab.store.object_store_database import DatabaseObjectStore
from gradlab.store.object_store_filesystem import FilesystemObjectStore
from gradlab.store.object_store_s3 import S3ObjectStore


class CheckpointIntegrityError(RuntimeError):
    """The referenced checkpoint is missing, of another size, or its digest differs: it is
    never resumed from."""


@dataclass(frozen=True)
class CheckpointRef:
    """What the database keeps about a checkpoint (the bytes are in ``store`` at ``key``)."""

    store: str
    key: str
    epoch: int
    size_bytes: int
    sha256: str


def run_prefix(run_id: str) -> str:
    return f"{run_id}/"


def checkpoint_key(run_id: str, epoch: int, attempt: int) -> str:
    return f"{run_prefix(run_id)}{epoch:06d}-{attempt}.ckpt"


def _older_or_unknown(epoch: int | None, kept: int) -> bool:
    return epoch is None or epoch <= kept


def _epoch_of(key: str) -> int | None:
    name = key.rpartition("/")[2]
    head = name.split("-", 1)[0]
    return int(head) if name.endswith(".ckpt") and head.isdigit() else None


class CheckpointStore:
    """Checkpoint bytes in one object store, addressed by references the database keeps."""

    def __init__(self, objects: ObjectStore):
        self.objects = objects

    @property
    def kind(self) -> str:
        return self.objects.kind

    def save(self, run_id: str, epoch: int, attempt: int, data: bytes) -> CheckpointRef:
        """Write the bytes (durably, before anything refers to them); their reference."""
        key = checkpoint_key(run_id, epoch, attempt)
        self.objects.put(key, data)
        return CheckpointRef(
            store=self.kind,
            key=key,
            epoch=epoch,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def load(self, ref: CheckpointRef) -> bytes:
        """The referenced bytes, checked against the reference's size and SHA-256."""
        if ref.store != self.kind:
            raise CheckpointIntegrityError(
                f"checkpoint {ref.key} is in the {ref.store} store; this process uses the "
                f"{self.kind} store (GRADLAB_CHECKPOINT_STORE)"
            )
        try:
            data = self.objects.get(ref.key)
        except ObjectMissingError as exc:
            raise CheckpointIntegrityError(f"checkpoint {ref.key} is missing: {exc}") from None
        if len(data) != ref.size_bytes:
            raise CheckpointIntegrityError(
                f"checkpoint {ref.key} has {len(data)} bytes, its reference says {ref.size_bytes}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise CheckpointIntegrityError(
                f"checkpoint {ref.key} has SHA-256 {digest}, its reference says {ref.sha256}"
            )
        return data

    def prune(self, run_id: str, keep: CheckpointRef) -> list[str]:
        """Delete the run's objects up to ``keep``'s epoch except ``keep`` (call once its
        reference is committed): older checkpoints, and objects of attempts that died before
        committing theirs. Later epochs are left alone: they may be a successor's, in flight."""
        stale = [
            key
            for key in self.objects.keys(run_prefix(run_id))
            if key != keep.key and _older_or_unknown(_epoch_of(key), keep.epoch)
        ]
        self.objects.delete(stale)
        return stale

    def delete_run(self, run_id: str) -> None:
        """Delete every object of the run (its experiment is gone)."""
        self.objects.delete_prefix(run_prefix(run_id))


def open_checkpoint_store(settings: ServerSettings,
                          factory: sessionmaker[Session]) -> CheckpointStore:
    """The store ``GRADLAB_CHECKPOINT_STORE`` names: ``database`` (default), a folder
    (``/path`` or ``file:///path``), or ``s3://bucket/prefix``."""
    where = settings.checkpoint_store.strip()
    if where in ("", "database"):
        return CheckpointStore(DatabaseObjectStore(factory))
    parsed = urlparse(where)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"GRADLAB_CHECKPOINT_STORE {where!r} names no bucket")
        return CheckpointStore(
            S3ObjectStore(
                parsed.netloc,
                parsed.path,
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
            )
        )
    if parsed.scheme == "file":
        return CheckpointStore(FilesystemObjectStore(parsed.path))
    if parsed.scheme == "" and where.startswith("/"):
        return CheckpointStore(FilesystemObjectStore(where))
    raise ValueError(
        f"GRADLAB_CHECKPOINT_STORE {where!r}: use database, an absolute folder path, "
        "file:///path or s3://bucket/prefix"
    )
