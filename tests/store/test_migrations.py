"""The schema exists only through migrations: empty -> head -> base -> head, on both backends."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from gradlab.store import migrate, runs
from gradlab.store.base import Base
from gradlab.store.checkpoint_store import CheckpointRef, CheckpointStore
from gradlab.store.object_store_database import DatabaseObjectStore
from gradlab.store.session import make_engine, make_session_factory

NOW = datetime(2026, 11, 27, tzinfo=UTC)
TABLES = {"studies", "experiments", "study_cells", "runs", "epoch_metrics", "gradflow_epochs",
          "checkpoints", "checkpoint_objects"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_upgrade_head_matches_models_and_downgrade_base_removes_everything(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"empty_{backend}_url")
    assert migrate.current_revision(url) is None

    migrate.upgrade(url, "head")
    assert migrate.current_revision(url) == migrate.head_revision()
    assert _tables(url) == TABLES
    # The migration creates exactly the models' schema: columns, types, keys, indexes.
    assert _schema_diff(url) == []

    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert _tables(url) == set()

    # And back up again: downgrade left nothing behind that blocks a fresh upgrade.
    migrate.upgrade(url, "head")
    assert _tables(url) == TABLES


def test_postgres_indexes_serve_the_lease_scan_and_cursor_pages(empty_postgres_url: str) -> None:
    migrate.upgrade(empty_postgres_url, "head")
    engine = make_engine(empty_postgres_url)
    try:
        inspector = inspect(engine)
        run_indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("runs")}
        exp_indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("experiments")}
        gradflow_pk = inspector.get_pk_constraint("gradflow_epochs")["constrained_columns"]
    finally:
        engine.dispose()
    assert run_indexes["ix_runs_status_lease_expires_at"] == ["status", "lease_expires_at"]
    assert exp_indexes["ix_experiments_created_at_id"] == ["created_at", "id"]
    assert gradflow_pk == ["run_id", "epoch"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_checkpoint_bytes_move_out_of_the_reference_row_and_back(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """0001 kept the bytes in ``checkpoints.data``; the references revision moves them to
    ``checkpoint_objects`` with their SHA-256, and its downgrade brings them back."""
    url = request.getfixturevalue(f"empty_{backend}_url")
    migrate.upgrade(url, "0001")
    blob = bytes(range(256)) * 40
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO experiments (id, name, spec, spec_hash, status, created_at, "
                "updated_at) VALUES ('e1', 'x', '{}', 'h', 'running', :now, :now)"), {"now": NOW})
            conn.execute(text(
                "INSERT INTO runs (id, experiment_id, seed, status, attempt, queued_at, "
                "epochs_done, created_at, updated_at) "
                "VALUES ('r1', 'e1', 0, 'running', 1, :now, 4, :now, :now)"), {"now": NOW})
            conn.execute(text(
                "INSERT INTO checkpoints (run_id, epoch, data, size_bytes, created_at) "
                "VALUES ('r1', 3, :data, :size, :now)"),
                {"data": blob, "size": len(blob), "now": NOW})
        migrate.upgrade(url, "head")
        factory = make_session_factory(engine)
        with factory() as session:
            ref = runs.latest_checkpoint(session, "r1")
        assert ref == CheckpointRef("database", "r1/000003-0.ckpt", 3, len(blob),
                                    hashlib.sha256(blob).hexdigest())
        assert CheckpointStore(DatabaseObjectStore(factory)).load(ref) == blob

        migrate.downgrade(url, "0001")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT epoch, data FROM checkpoints")).one()
        assert (row.epoch, bytes(row.data)) == (3, blob)
    finally:
        engine.dispose()
