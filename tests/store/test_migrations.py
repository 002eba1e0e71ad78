"""The schema exists only through migrations: empty -> head -> base -> head, on both backends."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from gradlab.store import migrate, runs
from gradlab.store.base import Base
from gradlab.store.checkpoint_store import CheckpointRef, CheckpointStore
from gradlab.store.float_arrays import unpack_floats
from gradlab.store.models import GradFlowEpochRow
from gradlab.store.object_store_database import DatabaseObjectStore
from gradlab.store.session import make_engine, make_session_factory

NOW = datetime(2026, 11, 27, tzinfo=UTC)
TABLES = {"studies", "experiments", "study_cells", "runs", "epoch_metrics", "gradflow_epochs",
          "checkpoints", "checkpoint_objects", "users", "api_tokens"}


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
            _insert_run(conn)
            conn.execute(text(
                "INSERT INTO checkpoints (run_id, epoch, data, size_bytes, created_at) "
                "VALUES ('r1', 3, :data, :size, :now)"),
                {"data": blob, "size": len(blob), "now": NOW})
        migrate.upgrade(url, "5c0e8a41d7b2")
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


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_gradient_flow_rows_per_layer_become_one_row_per_epoch_and_back(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """The one-row-per-epoch revision packs every layer's values into arrays, in layer order
    (a layer never written reads as NaN), and its downgrade unpacks them again."""
    url = request.getfixturevalue(f"empty_{backend}_url")
    migrate.upgrade(url, "5c0e8a41d7b2")
    columns = ["last_batch_mean_abs", "last_batch_max_abs", "last_batch_l2",
               "epoch_mean_mean_abs", "epoch_mean_max_abs", "epoch_mean_l2"]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _insert_run(conn)
            for layer in (2, 0):  # layer 1 never written, rows out of order
                conn.execute(text(
                    f"INSERT INTO gradflow_stats (run_id, epoch, layer_index, {', '.join(columns)})"
                    f" VALUES ('r1', 0, :layer, {', '.join(f':{c}' for c in columns)})"),
                    {"layer": layer, **{c: layer + i / 10 for i, c in enumerate(columns)}})
        migrate.upgrade(url, "9d4f2b7c1e60")
        factory = make_session_factory(engine)
        with factory() as session:
            row = session.get(GradFlowEpochRow, ("r1", 0))
            values = [unpack_floats(getattr(row, c)) for c in columns]
        assert [v[0] for v in values] == [i / 10 for i in range(6)]
        assert all(math.isnan(v[1]) for v in values)
        assert [v[2] for v in values] == [2 + i / 10 for i in range(6)]

        migrate.downgrade(url, "5c0e8a41d7b2")
        with engine.connect() as conn:
            layers = conn.execute(text(
                "SELECT layer_index, last_batch_mean_abs FROM gradflow_stats ORDER BY 1")).all()
        assert [tuple(r) for r in layers] == [(0, 0.0), (2, 2.0)]  # layer 1: still none
    finally:
        engine.dispose()


def _insert_run(conn: object) -> None:
    conn.execute(text(  # type: ignore[attr-defined]
        "INSERT INTO experiments (id, name, spec, spec_hash, status, created_at, updated_at) "
        "VALUES ('e1', 'x', '{}', 'h', 'running', :now, :now)"), {"now": NOW})
    conn.execute(text(  # type: ignore[attr-defined]
        "INSERT INTO runs (id, experiment_id, seed, status, attempt, queued_at, epochs_done, "
        "created_at, updated_at) VALUES ('r1', 'e1', 0, 'running', 1, :now, 4, :now, :now)"),
        {"now": NOW})
