"""Throwaway databases for tests: a real PostgreSQL database per test session, and SQLite.

A pytest plugin (loaded by ``tests/conftest.py``). Fixtures:

- ``postgres_url`` (session): a uniquely named database on 127.0.0.1:5432 (user postgres,
  trust auth; override the server with ``GRADLAB_TEST_POSTGRES_ADMIN_URL``), migrated to head,
  dropped at the end of the session. Yields ``postgresql+psycopg://...``.
- ``postgres_session_factory`` (session): a ``sessionmaker`` bound to it.
- ``sqlite_url`` (session): a migrated SQLite file in a temporary folder.
- ``sqlite_session_factory`` (session).
- ``module_postgres_url`` (module): a migrated database of the test module's own, for tests
  whose processes (a worker, the reaper, the API) must find only that module's runs.
- ``own_postgres_url`` (function): the same, one per test.
- ``empty_postgres_url`` / ``empty_sqlite_url`` (function): a fresh database with no schema,
  for migration tests.
- ``database_url`` (function, parametrised ``postgres`` / ``sqlite``): the session database of
  each kind, so one test body runs on both backends.

Every database is named uniquely, so test sessions (and pytest-xdist's workers) that share the
server never meet. Helpers ``migrated_postgres_database(prefix)`` (a context manager: the one
way a migrated database is made here), ``create_postgres_database()``,
``drop_postgres_database(url)`` and ``truncate_all(url)`` serve benchmarks and tests that
need a clean slate between tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store import migrate
from gradlab.store.base import Base
from gradlab.store.session import make_engine, make_session_factory

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("GRADLAB_TEST_POSTGRES_ADMIN_URL", DEFAULT_ADMIN_URL)


def _libpq(url: str) -> str:
    """``postgresql+psycopg://...`` -> a libpq connection string psycopg accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_postgres_database(prefix: str = "gradlab_test") -> str:
    """Create an empty, uniquely named database; return its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(_libpq(admin_url()), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {admin_url()} ({exc}). Start it (`make services`) "
            "or point GRADLAB_TEST_POSTGRES_ADMIN_URL at a server where the user may create "
            "databases."
        ) from exc
    return make_url(admin_url()).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """Drop the database, disconnecting whatever still holds it (a killed worker's pool)."""
    name = make_url(url).database
    with psycopg.connect(_libpq(admin_url()), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def truncate_all(url: str) -> None:
    """Delete every row of every table (schema and alembic_version stay)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            tables = list(reversed(Base.metadata.sorted_tables))
            if engine.dialect.name == "postgresql":
                names = ", ".join(f'"{t.name}"' for t in tables)
                conn.execute(text(f"TRUNCATE {names} CASCADE"))
            else:
                for table in tables:
                    conn.execute(table.delete())
    finally:
        engine.dispose()


def _postgres_or_fail(prefix: str = "gradlab_test") -> str:
    try:
        return create_postgres_database(prefix)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@contextmanager
def migrated_postgres_database(prefix: str = "gradlab_test") -> Iterator[str]:
    """A new, uniquely named database migrated to head; dropped on exit."""
    url = _postgres_or_fail(prefix)
    try:
        migrate.upgrade(url, "head")
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with migrated_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database of this test module's own (named after the module)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with migrated_postgres_database(f"gradlab_{module[:30]}") as url:
        yield url


@pytest.fixture
def own_postgres_url() -> Iterator[str]:
    """A migrated database of this test's own."""
    with migrated_postgres_database("gradlab_own") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_session_factory(postgres_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(postgres_engine)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "gradlab.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url, "head")
    return url


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_session_factory(sqlite_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(sqlite_engine)


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    url = _postgres_or_fail()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The migrated session database of each backend in turn."""
    return request.getfixturevalue(f"{request.param}_url")
