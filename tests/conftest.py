"""Fixtures shared by every test area (throwaway PostgreSQL and SQLite databases, a
private PgBouncer, an S3 server)."""

pytest_plugins = [
    "tests.support.databases",
    "tests.support.pgbouncer",
    "tests.support.s3_server",
]
