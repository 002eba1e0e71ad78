"""The store through a private PgBouncer in transaction-pooling mode (real PgBouncer, real
PostgreSQL): transactions of many clients share few server connections, so nothing may
outlive a transaction on its server connection: no server-side prepared statements."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import GRADFLOW_STATS, EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import ServerSettings
from gradlab.store import runs
from gradlab.store.experiments import create_experiment
from gradlab.store.gradflow import read_gradflow
from gradlab.store.session import (
    engine_from_settings,
    make_engine,
    make_session_factory,
    session_scope,
)
from tests.support.pgbouncer import PgBouncer

pytestmark = [pytest.mark.services]

LAYERS = tuple(f"layer{j}" for j in range(39))


@pytest.fixture
def one_server_connection() -> Iterator[PgBouncer]:
    """A PgBouncer with a single server connection: every client's transaction lands on it."""
    bouncer = PgBouncer(pool_size=1)
    yield bouncer
    bouncer.stop()


def test_without_the_pooler_setting_prepared_statements_collide_on_the_shared_connection(
    one_server_connection: PgBouncer, postgres_url: str
) -> None:
    """Why ``GRADLAB_DATABASE_POOLER=pgbouncer`` exists: psycopg prepares a statement after 5
    executions in committed transactions, on whatever server connection PgBouncer lent;
    another client's first prepared statement has the same name and fails there."""
    engines = [make_engine(one_server_connection.url_for(postgres_url)) for _ in range(2)]
    try:
        for n in range(6):
            with engines[0].begin() as conn:  # committed (a rollback forgets the counts)
                conn.execute(text("SELECT :n"), {"n": n})
        with pytest.raises(ProgrammingError) as caught:
            for n in range(6):
                with engines[1].begin() as conn:
                    conn.execute(text("SELECT :n + 1"), {"n": n})
        assert isinstance(caught.value.orig, psycopg.errors.DuplicatePreparedStatement)
    finally:
        for engine in engines:
            engine.dispose()


def _epoch(epoch: int) -> tuple[EpochMetrics, GradFlowEpoch]:
    values = {s: [1e-3 * (j + 1) for j in range(len(LAYERS))] for s in GRADFLOW_STATS}
    return (EpochMetrics(epoch, 4.0, 0.1, 4.1, 0.1, 1e-3, 1.0),
            GradFlowEpoch(epoch, LAYERS, values, dict(values)))


def _train_synthetic(factory: sessionmaker[Session], run_id: str, epochs: int) -> None:
    with session_scope(factory) as session:
        claimed = runs.claim_run(session, run_id, "w", lease_seconds=60, max_attempts=3)
    assert claimed is not None
    for epoch in range(epochs):
        metrics, gradflow = _epoch(epoch)
        with session_scope(factory) as session:
            assert runs.heartbeat(session, run_id, claimed.owner, lease_seconds=60)
        with session_scope(factory) as session:
            runs.record_epoch(session, run_id, metrics, gradflow, None, owner=claimed.owner,
                              lease_seconds=60)
        with factory() as session:
            flow = read_gradflow(session, [run_id], stat="mean_abs", window="last_batch",
                                 layer_count=len(LAYERS))
            assert flow[run_id].epochs == list(range(epoch + 1))
    with session_scope(factory) as session:
        assert runs.finish_run(session, run_id, "succeeded", owner=claimed.owner)


def test_workers_sharing_one_server_connection_through_pgbouncer_never_collide(
    one_server_connection: PgBouncer, postgres_url: str
) -> None:
    settings = ServerSettings(database_url=one_server_connection.url_for(postgres_url),
                              database_pooler="pgbouncer", database_pool_size=2)
    engines = [engine_from_settings(settings) for _ in range(4)]  # four worker processes
    factories = [make_session_factory(engine) for engine in engines]
    with session_scope(factories[0]) as session:
        run_ids = [r.id for r in create_experiment(
            session, ExperimentSpec(name="pgbouncer", depth=38, seeds=[0, 1, 2, 3])).runs]
    errors: list[BaseException] = []

    def worker(factory: sessionmaker[Session], run_id: str) -> None:
        try:
            _train_synthetic(factory, run_id, epochs=8)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=pair) for pair in zip(factories, run_ids,
                                                                           strict=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for engine in engines:
            engine.dispose()
    assert errors == []
    pools = [p for p in one_server_connection.admin("SHOW POOLS")
             if p["database"] == settings.database_url.rsplit("/", 1)[1]]
    assert pools and pools[0]["sv_active"] + pools[0]["sv_idle"] + pools[0]["sv_used"] <= 1
