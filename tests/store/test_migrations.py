"""The schema exists only through migrations: empty -> head -> base -> head, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from gradlab.store import migrate
from gradlab.store.base import Base
from gradlab.store.session import make_engine

TABLES = {"studies", "experiments", "study_cells", "runs", "epoch_metrics", "gradflow_stats",
          "checkpoints", "users", "api_tokens"}


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
        gradflow_pk = inspector.get_pk_constraint("gradflow_stats")["constrained_columns"]
    finally:
        engine.dispose()
    assert run_indexes["ix_runs_status_lease_expires_at"] == ["status", "lease_expires_at"]
    assert exp_indexes["ix_experiments_created_at_id"] == ["created_at", "id"]
    assert gradflow_pk == ["run_id", "epoch", "layer_index"]
