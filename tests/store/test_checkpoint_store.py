"""The checkpoint store on each of its places, against real servers: PostgreSQL and SQLite
(the database store), a folder, and S3 spoken by moto's standalone server (no S3 server
installs here; the name of each S3 test says so)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gradlab.settings import ServerSettings
from gradlab.store.checkpoint_store import (
    CheckpointIntegrityError,
    CheckpointStore,
    checkpoint_key,
    open_checkpoint_store,
)
from gradlab.store.object_store_database import DatabaseObjectStore
from gradlab.store.object_store_filesystem import FilesystemObjectStore
from gradlab.store.object_store_s3 import S3ObjectStore

PLACES = ["database-postgres", "database-sqlite", "filesystem", "s3-on-moto-server"]
BLOB = bytes(range(256)) * 1000


@pytest.fixture(params=PLACES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param.startswith("database-"):
        backend = request.param.split("-")[1]
        factory: sessionmaker[Session] = request.getfixturevalue(f"{backend}_session_factory")
        return CheckpointStore(DatabaseObjectStore(factory))
    if request.param == "filesystem":
        return CheckpointStore(FilesystemObjectStore(tmp_path / "checkpoints"))
    endpoint = request.getfixturevalue("moto_s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return CheckpointStore(S3ObjectStore(bucket, "gradlab/ckpt", endpoint_url=endpoint))


def _run_id(request: pytest.FixtureRequest) -> str:
    # The database store's table is shared by the session: a run id per test keeps them apart.
    return hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]


def test_saved_bytes_come_back_checked_against_their_reference(
    store: CheckpointStore, request: pytest.FixtureRequest
) -> None:
    run_id = _run_id(request)
    ref = store.save(run_id, 3, 1, BLOB)
    assert (ref.store, ref.key, ref.epoch, ref.size_bytes) == (
        store.kind, checkpoint_key(run_id, 3, 1), 3, len(BLOB))
    assert ref.sha256 == hashlib.sha256(BLOB).hexdigest()
    assert store.load(ref) == BLOB
    assert store.objects.keys(f"{run_id}/") == [ref.key]


def test_bytes_that_differ_from_the_reference_are_never_loaded(
    store: CheckpointStore, request: pytest.FixtureRequest
) -> None:
    run_id = _run_id(request)
    ref = store.save(run_id, 0, 1, BLOB)
    flipped = bytearray(BLOB)
    flipped[1000] ^= 1
    store.objects.put(ref.key, bytes(flipped))  # same size, one bit off
    with pytest.raises(CheckpointIntegrityError, match="SHA-256"):
        store.load(ref)
    store.objects.put(ref.key, BLOB[:-1])
    with pytest.raises(CheckpointIntegrityError, match="bytes"):
        store.load(ref)
    store.objects.delete([ref.key])
    with pytest.raises(CheckpointIntegrityError, match="missing"):
        store.load(ref)
    other_kind = "s3" if store.kind != "s3" else "filesystem"
    with pytest.raises(CheckpointIntegrityError, match=f"in the {other_kind} store"):
        store.load(ref.__class__(other_kind, ref.key, 0, ref.size_bytes, ref.sha256))


def test_prune_keeps_the_committed_checkpoint_and_anything_newer(
    store: CheckpointStore, request: pytest.FixtureRequest
) -> None:
    run_id = _run_id(request)
    for epoch in (0, 1, 2):
        store.save(run_id, epoch, 1, b"attempt 1")
    dead_attempt = store.save(run_id, 3, 1, b"written, never referenced")
    keep = store.save(run_id, 3, 2, b"the successor's")
    in_flight = store.save(run_id, 4, 2, b"not committed yet")
    deleted = store.prune(run_id, keep)
    assert sorted(deleted) == sorted(
        [checkpoint_key(run_id, e, 1) for e in (0, 1, 2)] + [dead_attempt.key])
    assert store.objects.keys(f"{run_id}/") == [keep.key, in_flight.key]


def test_deleting_a_run_removes_its_objects_and_no_others(
    store: CheckpointStore, request: pytest.FixtureRequest
) -> None:
    run_id = _run_id(request)
    other = f"{run_id}x"  # shares the prefix as a string, not as a folder
    for epoch in (0, 1):
        store.save(run_id, epoch, 1, BLOB)
    kept = store.save(other, 0, 1, BLOB)
    store.delete_run(run_id)
    assert store.objects.keys(f"{run_id}/") == []
    assert store.load(kept) == BLOB


def test_a_killed_folder_write_leaves_no_partial_object_and_deletion_clears_it(
    tmp_path: Path,
) -> None:
    objects = FilesystemObjectStore(tmp_path)
    store = CheckpointStore(objects)
    ref = store.save("run", 0, 1, BLOB)
    # What a writer killed before its rename leaves: a hidden partial file beside the target.
    (tmp_path / "run" / ".partial-000001-1.ckpt.dead").write_bytes(BLOB[:10])
    assert objects.keys("run/") == [ref.key]
    store.delete_run("run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "kind"),
    [("database", "database"), ("/srv/ckpt", "filesystem"), ("file:///srv/ckpt", "filesystem"),
     ("s3://bucket/some/prefix", "s3")],
)
def test_the_setting_names_the_store(
    setting: str, kind: str, sqlite_session_factory: sessionmaker[Session]
) -> None:
    settings = ServerSettings(checkpoint_store=setting, s3_endpoint_url="http://127.0.0.1:9")
    assert open_checkpoint_store(settings, sqlite_session_factory).kind == kind


@pytest.mark.parametrize("setting", ["relative/path", "s3://", "ftp://host/x"])
def test_an_unusable_setting_is_refused_by_name(
    setting: str, sqlite_session_factory: sessionmaker[Session]
) -> None:
    with pytest.raises(ValueError, match="GRADLAB_CHECKPOINT_STORE"):
        open_checkpoint_store(ServerSettings(checkpoint_store=setting), sqlite_session_factory)
