"""The Helm chart's optional PgBouncer (pgbouncer.enabled): its rendered configuration run by
Debian's real PgBouncer in front of the test PostgreSQL, and the gradlab store working through
it with the URL and pooler setting the chart hands the API, workers and reaper.

No cluster runs here: the Secret's pgbouncer.ini is started as is, with only the listening
address and port moved to a free local one (in a pod it is 0.0.0.0:6432)."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from gradlab.science.spec import ExperimentSpec
from gradlab.settings import ServerSettings
from gradlab.store.experiments import create_experiment, get_experiment
from gradlab.store.session import engine_from_settings, make_session_factory, session_scope
from tests.deploy.chart import container, find, manifests, render
from tests.support.pgbouncer import pgbouncer_program
from tests.support.processes import free_port

pytestmark = [pytest.mark.services]


def _chart_url(postgres_url: str) -> str:
    """The test database as database.url would name it (a password: the chart needs one)."""
    url = make_url(postgres_url).set(password="chart-password")
    return url.render_as_string(hide_password=False)


def _start(folder: Path, ini: str, userlist: str, port: int) -> subprocess.Popen[bytes]:
    ini = ini.replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
    ini = ini.replace("listen_port = 6432", f"listen_port = {port}")
    ini = ini.replace("/etc/pgbouncer/", f"{folder}/")
    (folder / "pgbouncer.ini").write_text(ini)
    (folder / "userlist.txt").write_text(userlist)
    argv = [pgbouncer_program(), str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        account = pwd.getpwnam("postgres")
        for path in (folder, *folder.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        argv[1:1] = ["-u", "postgres"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            psycopg.connect(host="127.0.0.1", port=port, dbname="nosuchdb", connect_timeout=2,
                            user="x", password="x").close()
        except psycopg.OperationalError as exc:
            if "refused" not in str(exc).lower():
                return  # PgBouncer answered (and refused the unknown database)
        time.sleep(0.2)
    output = process.stdout.read().decode(errors="replace") if process.poll() is not None else ""
    raise RuntimeError(f"the chart's PgBouncer did not start:\n{output}")


@pytest.fixture
def chart_pgbouncer(postgres_url: str) -> Iterator[tuple[str, int]]:
    """(the pooled URL the chart gives gradlab, moved to the local port), PgBouncer running."""
    rendered = manifests({"pgbouncer": {"enabled": True},
                          "database": {"url": _chart_url(postgres_url)}})
    secret = find(rendered, "Secret", "-pgbouncer")["stringData"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gradlab-chart-pgbouncer-") as folder:
        process = _start(Path(folder), secret["pgbouncer.ini"], secret["userlist.txt"], port)
        try:
            _wait_listening(process, port)
            pooled = secret["database-url"].replace("demo-gradlab-pgbouncer:6432",
                                                    f"127.0.0.1:{port}")
            yield pooled, port
        finally:
            process.terminate()
            process.wait(10)


def test_the_charts_pgbouncer_pools_the_store_with_a_password(
    chart_pgbouncer: tuple[str, int],
) -> None:
    pooled, port = chart_pgbouncer
    assert f"127.0.0.1:{port}" in pooled and "chart-password" in pooled
    settings = ServerSettings(database_url=pooled, database_pooler="pgbouncer")
    engine = engine_from_settings(settings)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as session:
            created = create_experiment(session, ExperimentSpec(name="via-chart-pgbouncer",
                                                                depth=8, seeds=[0, 1]))
        for _ in range(3):  # transactions that may land on any server connection
            with session_scope(factory) as session:
                found = get_experiment(session, created.id)
                assert found is not None and [r.seed for r in found.runs] == [0, 1]
    finally:
        engine.dispose()
    with pytest.raises(psycopg.OperationalError):  # the userlist's password is checked
        psycopg.connect(pooled.replace("postgresql+psycopg", "postgresql").replace(
            "chart-password", "wrong-password"), connect_timeout=5).close()


def test_apps_go_through_pgbouncer_and_migrations_around_it() -> None:
    url = "postgresql://gradlab:pw@pg.internal:5433/gradlab"
    objects = manifests({"pgbouncer": {"enabled": True}, "database": {"url": url}})
    for name in ("-api", "-worker", "-reaper"):
        env = container(find(objects, "Deployment", name), name[1:])["env"]
        assert {"name": "GRADLAB_DATABASE_POOLER", "value": "pgbouncer"} in env
        database = next(e for e in env if e["name"] == "GRADLAB_DATABASE_URL")
        assert database["valueFrom"]["secretKeyRef"] == {"name": "demo-gradlab-pgbouncer",
                                                         "key": "database-url"}
    migrate = find(objects, "Job", "-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert migrate["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    assert migrate["env"][0]["valueFrom"]["secretKeyRef"]["name"] != "demo-gradlab-pgbouncer"
    ini = find(objects, "Secret", "-pgbouncer")["stringData"]["pgbouncer.ini"]
    assert "gradlab = host=pg.internal port=5433 dbname=gradlab" in ini
    assert "pool_mode = transaction" in ini
    assert "Deployment" in {o["kind"] for o in objects if o["metadata"]["name"].endswith(
        "-pgbouncer")}
    assert not [o for o in manifests() if o["metadata"]["name"].endswith("-pgbouncer")]


def test_pgbouncer_without_a_plain_database_url_is_refused_naming_why() -> None:
    with pytest.raises(Exception, match="pgbouncer.enabled needs database.url"):
        render({"pgbouncer": {"enabled": True}, "database": {"existingSecret": "db"}})
