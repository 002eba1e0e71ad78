"""Fixtures shared by every test area (throwaway PostgreSQL and SQLite databases, a
private PgBouncer, an S3 server)."""

from __future__ import annotations

import os
import sys

import pytest

pytest_plugins = [
    "tests.support.databases",
    "tests.support.pgbouncer",
    "tests.support.s3_server",
]


def pytest_configure() -> None:
    """Under pytest-xdist (``make test``: one worker per core) every worker, and every process
    its tests start (they inherit the variable), computes on one thread: with each taking all
    the cores, OpenMP's threads spin at barriers waiting for each other's cores and a tiny
    model's step gets several times slower. Both sides of every comparison run alike."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process (TEST_WORKERS=0): it may have every core
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # read at import: set it as well if a plugin loaded torch already
        sys.modules["torch"].set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files holding tests marked slow first: pytest-xdist (``make test``) hands whole
    files to its workers in this order, so the long files start at once and the short ones
    fill in around them instead of one long file starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
