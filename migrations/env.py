"""Alembic environment: the URL comes from the caller's config, else alembic.ini, else settings."""

from __future__ import annotations

from typing import Any

from alembic import context

import gradlab.store.models  # noqa: F401  (registers every table on Base.metadata)
from gradlab.settings import ServerSettings
from gradlab.store.base import Base
from gradlab.store.session import is_sqlite, make_engine

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    # gradlab.store.migrate passes the URL as an attribute; `alembic -x url=...` and the
    # ini's sqlalchemy.url come next; GRADLAB_DATABASE_URL last.
    url = config.attributes.get("database_url") or context.get_x_argument(as_dictionary=True).get(
        "url"
    )
    return url or config.get_main_option("sqlalchemy.url") or ServerSettings().database_url


def _configure(**kwargs: Any) -> None:
    url = _database_url()
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=is_sqlite(url),
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Through PgBouncer too (transaction pooling): no server-side prepared statements.
    pooled = ServerSettings().database_pooler == "pgbouncer"
    engine = make_engine(_database_url(), transaction_pooler=pooled)
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
