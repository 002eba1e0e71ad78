"""Fixtures shared by every test area (throwaway PostgreSQL and SQLite databases)."""

pytest_plugins = ["tests.support.databases", "tests.support.s3_server"]
