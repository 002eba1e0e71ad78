"""Fixtures shared by every test area (throwaway PostgreSQL and SQLite databases, a
private PgBouncer, an S3 server)."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support.databases",
    "tests.support.pgbouncer",
    "tests.support.s3_server",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files holding tests marked slow first: pytest-xdist (``make test``) hands whole
    files to its workers in this order, so the long files start at once and the short ones
    fill in around them instead of one long file starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
