"""A private PgBouncer in transaction-pooling mode in front of the test PostgreSQL, on a free
port, for tests and the cluster simulation. The machine's own PostgreSQL and PgBouncer
configuration are never touched: the config, log and pid file live in a temporary folder.

A pytest plugin (loaded by ``tests/conftest.py``) with the ``pgbouncer`` fixture (session);
``bench/cluster_sim.py`` uses ``PgBouncer`` directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.databases import admin_url
from tests.support.processes import free_port

CONFIG = """\
[databases]
* = host={host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {max_clients}
max_db_connections = {pool_size}
admin_users = {user}
stats_users = {user}
ignore_startup_parameters = extra_float_digits
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
server_check_delay = 10
"""


def pgbouncer_program() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(found).exists():
        raise RuntimeError("pgbouncer is not installed: `make services` installs it "
                           "(Debian package pgbouncer)")
    return found


class PgBouncer:
    """``pgbouncer`` on 127.0.0.1:``port`` pooling ``pool_size`` server connections per
    database for up to ``max_clients`` clients."""

    def __init__(self, *, pool_size: int = 10, max_clients: int = 2000):
        server = make_url(admin_url())
        self.user = server.username or "postgres"
        self.port = free_port()
        self.pool_size = pool_size
        self.folder = Path(tempfile.mkdtemp(prefix="gradlab-pgbouncer-"))
        (self.folder / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.folder / "pgbouncer.ini").write_text(CONFIG.format(
            host=server.host or "127.0.0.1", server_port=server.port or 5432, port=self.port,
            folder=self.folder, pool_size=pool_size, max_clients=max_clients, user=self.user))
        argv = [pgbouncer_program(), str(self.folder / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            for path in self.folder.iterdir():
                os.chown(path, account.pw_uid, account.pw_gid)
            argv[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise RuntimeError(f"PgBouncer did not start:\n{self.log_tail()}")

    def url_for(self, database_url: str) -> str:
        """The same database, reached through this PgBouncer."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """A command on PgBouncer's admin console (SHOW POOLS, SHOW STATS, ...) as dicts."""
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             dbname="pgbouncer", autocommit=True, connect_timeout=3,
                             prepare_threshold=None) as conn, conn.cursor() as cursor:
            cursor.execute(command)
            names = [c.name for c in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def log_tail(self, chars: int = 4000) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncer]:
    try:
        bouncer = PgBouncer(pool_size=4)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield bouncer
    finally:
        bouncer.stop()
