"""Engines and sessions for SQLite (embedded mode) and PostgreSQL (cluster).

Repositories flush and never commit; the transaction boundary is :func:`session_scope` (worker)
or the API's session dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from gradlab.settings import ServerSettings

# How long a SQLite writer waits for another writer's lock before giving up (ms). The API and
# the local worker write the same file; epoch writes take milliseconds, so waiting is right.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(
    url: str,
    *,
    echo: bool = False,
    pool_size: int = 5,
    max_overflow: int = 10,
    transaction_pooler: bool = False,
) -> Engine:
    """An engine for ``url``: SQLite gets WAL, foreign keys and a busy timeout; Postgres a
    pre-ping pool of ``pool_size`` (+ ``max_overflow``) connections (they die across worker
    forks, broker blips and DB restarts).

    ``transaction_pooler``: the URL is PgBouncer in transaction-pooling mode, where each
    transaction may run on another server connection, so psycopg must not prepare statements
    server-side (a prepared statement lives on the connection that prepared it). Nothing else
    here keeps session state across transactions (no SET, LISTEN, advisory locks, temp tables).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {"prepare_threshold": None} if transaction_pooler else {}
        return create_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args=connect_args,
            future=True,
        )

    in_memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {
        "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    }
    if in_memory:
        # One shared connection, otherwise every checkout would see a different empty database.
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                # WAL: readers (the API) never block the writer (the worker) and vice versa.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    return engine


def engine_from_settings(settings: ServerSettings) -> Engine:
    """The engine of a process configured by GRADLAB_* settings (pool sizes, pooler)."""
    return make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        transaction_pooler=settings.database_pooler == "pgbouncer",
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects read in a scope stay usable after it commits (the worker
    # reads a run's spec, commits, then trains for hours with it).
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block succeeds, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
