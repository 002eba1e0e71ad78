"""What PostgreSQL (and PgBouncer) spend while a benchmark runs: CPU of the backends serving
one database and of every postgres process, WAL bytes, table and index sizes, connections.

Read from ``pg_stat_activity``, ``pg_current_wal_lsn()``, ``pg_*_size()`` over a direct admin
connection, and from /proc for CPU (Linux). The server is shared with whatever else runs on
the machine: WAL and all-postgres CPU include their work too; the backends' CPU is ours.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

# Tables a run writes, and what their size is made of.
TABLES = ("runs", "epoch_metrics", "gradflow_epochs", "checkpoints", "checkpoint_objects")


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """Every process named postgres on this machine (server, backends, WAL writer, ...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class CpuTally:
    """CPU seconds of a changing set of processes, counted from when each is first seen."""

    seen: dict[int, float] = field(default_factory=dict)
    total: float = 0.0

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            now = process_cpu_seconds(pid)
            before = self.seen.get(pid)
            if before is not None and now >= before:
                self.total += now - before
            self.seen[pid] = now


class DatabaseProbe(threading.Thread):
    """Samples once a second between ``start()`` and ``stop()``: CPU of our database's
    backends, of all postgres processes and of PgBouncer; the most connections seen."""

    def __init__(self, admin_dsn: str, database: str, pgbouncer_pid: int | None = None):
        super().__init__(daemon=True, name="database-probe")
        self.admin_dsn, self.database, self.pgbouncer_pid = admin_dsn, database, pgbouncer_pid
        self.backends, self.postgres, self.pgbouncer = CpuTally(), CpuTally(), CpuTally()
        self.max_connections = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                    (self.database,)).fetchall()
                self.max_connections = max(self.max_connections, len(rows))
                self.backends.sample([r[0] for r in rows])
                self.postgres.sample(postgres_pids())
                if self.pgbouncer_pid is not None:
                    self.pgbouncer.sample([self.pgbouncer_pid])
                if self._halt.wait(1.0):
                    return

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def wal_lsn(admin_dsn: str) -> int:
    """The current WAL position in bytes (differences are WAL bytes written, by anyone)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def table_sizes(dsn: str) -> dict[str, dict[str, int]]:
    """Per table: heap (with TOAST) and index bytes."""
    sizes: dict[str, dict[str, int]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            row: Any = conn.execute(
                "SELECT pg_table_size(%s), pg_indexes_size(%s)", (table, table)).fetchone()
            sizes[table] = {"table_bytes": int(row[0]), "index_bytes": int(row[1])}
    return sizes
