"""End to end through a private PgBouncer in transaction-pooling mode: the API (uvicorn,
HTTP), a Celery worker and the reaper all reach PostgreSQL only through it, with checkpoints
in a folder. A worker killed mid-run is found by the reaper and its run resumed."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gradlab.settings import ServerSettings
from gradlab.store import runs
from gradlab.store.models import EpochMetricsRow, Run
from gradlab.store.session import engine_from_settings, make_session_factory
from tests.support.databases import admin_url
from tests.support.pgbouncer import PgBouncer
from tests.support.processes import ServiceProcess, wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]

EPOCHS = 4


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def service_env(service_env: dict[str, str], module_postgres_url: str, pgbouncer: PgBouncer,
                checkpoint_folder: Path) -> Iterator[dict[str, str]]:
    """The worker tests' environment, with every process's database URL on PgBouncer."""
    yield {
        **service_env,
        "GRADLAB_DATABASE_URL": pgbouncer.url_for(module_postgres_url),
        "GRADLAB_DATABASE_POOLER": "pgbouncer",
        "GRADLAB_DATABASE_POOL_SIZE": "2",
        "GRADLAB_CHECKPOINT_STORE": str(checkpoint_folder),
    }


@pytest.fixture(scope="module")
def store(service_env: dict[str, str]) -> Iterator[sessionmaker[Session]]:
    """The test's own reads go through PgBouncer too, so it holds every server connection."""
    settings = ServerSettings(database_url=service_env["GRADLAB_DATABASE_URL"],
                              database_pooler="pgbouncer", database_pool_size=1)
    engine = engine_from_settings(settings)
    yield make_session_factory(engine)
    engine.dispose()


def _server_connections(database: str) -> int:
    server = make_url(admin_url())
    with psycopg.connect(host=server.host, port=server.port, user=server.username,
                         dbname="postgres", autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           (database,)).fetchone()
    return int(row[0]) if row else 0


def test_api_worker_and_reaper_work_through_pgbouncer(
    celery_worker: ServiceProcess, http: httpx.Client, store: sessionmaker[Session],
    pgbouncer: PgBouncer, module_postgres_url: str, checkpoint_folder: Path,
) -> None:
    database = make_url(module_postgres_url).database
    spec: dict[str, Any] = {
        "name": "through-pgbouncer", "depth": 8, "seeds": [0],
        "hyperparameters": {"epochs": EPOCHS},
        "data": {"train_limit": 1000, "val_limit": 200, "test_limit": 200},
    }
    created = http.post("/experiments", json=spec)
    assert created.status_code == 201, created.text
    experiment_id, run_id = created.json()["id"], created.json()["runs"][0]["id"]
    most_connections = 0

    def epochs_done(at_least: int) -> Run | None:
        nonlocal most_connections
        most_connections = max(most_connections, _server_connections(database))
        assert http.get(f"/experiments/{experiment_id}/gradflow").status_code == 200
        with store() as session:
            run = session.get(Run, run_id)
            return run if run is not None and run.epochs_done >= at_least else None

    before = wait_for("two epochs", lambda: epochs_done(2), 180, service=celery_worker)
    os.kill(int(before.worker.rsplit("#", 1)[0].rsplit(":", 1)[1]), signal.SIGKILL)

    def finished() -> dict[str, Any] | None:
        epochs_done(0)
        body = http.get(f"/experiments/{experiment_id}").json()
        return body if body["status"] in {"succeeded", "failed"} else None

    done = wait_for("the resumed run to finish", finished, 240, interval=1.0,
                    service=celery_worker)
    assert done["status"] == "succeeded", done
    with store() as session:
        run = session.get(Run, run_id)
        assert run.attempt == 2 and run.environment["resumed_from_epoch"] >= 1
        assert session.scalars(select(EpochMetricsRow.epoch)
                               .where(EpochMetricsRow.run_id == run_id)
                               .order_by(EpochMetricsRow.epoch)).all() == list(range(EPOCHS))
        final = runs.latest_checkpoint(session, run_id)
    assert final.store == "filesystem" and final.epoch == EPOCHS - 1
    assert sorted(p.name for p in (checkpoint_folder / run_id).iterdir()
                  if not p.name.startswith(".")) == [final.key.rsplit("/", 1)[1]]

    # Every process went through PgBouncer: its transactions counted there, and the server
    # never saw more connections to this database than PgBouncer's pool holds.
    stats = {s["database"]: s for s in pgbouncer.admin("SHOW STATS")}
    assert stats[database]["total_xact_count"] > 50
    assert 0 < most_connections <= pgbouncer.pool_size
    assert "prepared statement" not in celery_worker.log_tail(200_000)
