"""Time one epoch write as the worker does it: a VGG38 checkpoint (model, Adam moments, best
weights, RNG, history) saved to the database's checkpoint store, then metrics + gradient flow
(39 layers x 3 stats x 2 windows, one row) + the checkpoint's reference in one transaction.

    .venv/bin/python bench/epoch_write.py [--epochs 100] [--database-url URL]

Without ``--database-url`` it creates a throwaway PostgreSQL database on 127.0.0.1:5432
(user postgres) and a SQLite file, times both, and drops them. Prints the figures and the
machine; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradlab.core.architectures import build_model  # noqa: E402
from gradlab.core.checkpoints import TrainingState, save_checkpoint  # noqa: E402
from gradlab.core.optimization import make_optimizer  # noqa: E402
from gradlab.core.reproducibility import capture_rng_state, data_generator  # noqa: E402
from gradlab.science.records import GRADFLOW_STATS, EpochMetrics, GradFlowEpoch  # noqa: E402
from gradlab.science.spec import ExperimentSpec  # noqa: E402
from gradlab.store import migrate, runs  # noqa: E402
from gradlab.store.checkpoint_store import CheckpointStore  # noqa: E402
from gradlab.store.experiments import create_experiment  # noqa: E402
from gradlab.store.object_store_database import DatabaseObjectStore  # noqa: E402
from gradlab.store.session import make_engine, make_session_factory, session_scope  # noqa: E402


def vgg38_checkpoint(epochs_of_history: int) -> tuple[bytes, tuple[str, ...]]:
    """A real checkpoint of the seed study's VGG38 (no BN) after an Adam step."""
    spec = ExperimentSpec(depth=38, seeds=[0])
    model = build_model(spec)
    optimizer = make_optimizer(model.parameters(), spec.hyperparameters)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # creates the Adam moments
    layers = tuple(model.gradflow_layer_names())
    state = TrainingState(last_epoch=epochs_of_history - 1)
    state.offer(0, 0.5, model)
    state.history = [EpochMetrics(e, 4.0, 0.1, 4.1, 0.1, 1e-3, 60.0)
                     for e in range(epochs_of_history)]
    blob = save_checkpoint(model=model, optimizer=optimizer, state=state,
                           rng=capture_rng_state(data_generator(0)), identity={"seed": 0})
    return blob, layers


def time_writes(url: str, epochs: int, blob: bytes, layers: tuple[str, ...]) -> dict[str, float]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        run_id = create_experiment(session, ExperimentSpec(name="bench", depth=38)).runs[0].id
    with session_scope(factory) as session:
        claimed = runs.claim_run(session, run_id, "bench", lease_seconds=600, max_attempts=3)
    assert claimed is not None
    values = {s: [1e-3 * (j + 1) for j in range(len(layers))] for s in GRADFLOW_STATS}
    store = CheckpointStore(DatabaseObjectStore(factory))
    with_ckpt: list[float] = []
    without_ckpt: list[float] = []
    for epoch in range(epochs):
        metrics = EpochMetrics(epoch, 4.0, 0.1, 4.1, 0.1, 1e-3, 60.0)
        gradflow = GradFlowEpoch(epoch, layers, values, values)
        for checkpoint, times in ((blob, with_ckpt), (None, without_ckpt)):
            started = time.perf_counter()
            ref = None if checkpoint is None else store.save(run_id, epoch, 1, checkpoint)
            with session_scope(factory) as session:
                runs.record_epoch(session, run_id, metrics, gradflow, ref,
                                  owner=claimed.owner, lease_seconds=600)
            if ref is not None:
                store.prune(run_id, ref)
            times.append(time.perf_counter() - started)
    wal = _wal_per_write(engine, factory, run_id, claimed.owner, layers, values, epochs)
    engine.dispose()
    return {
        "wal_bytes_per_write": wal,
        "p50_ms": 1000 * statistics.median(with_ckpt),
        "p95_ms": 1000 * statistics.quantiles(with_ckpt, n=20)[-1],
        "mean_ms": 1000 * statistics.fmean(with_ckpt),
        "p50_no_checkpoint_ms": 1000 * statistics.median(without_ckpt),
    }


def _wal_per_write(engine: Engine, factory: sessionmaker[Session], run_id: str, owner: str,
                   layers: tuple[str, ...], values: dict[str, list[float]], first_epoch: int,
                   writes: int = 100) -> float:
    """WAL bytes per epoch write without a checkpoint (Postgres; the WAL position is the
    server's, so anything else writing meanwhile counts too: an upper bound). NaN on SQLite."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        return float("nan")
    lsn = text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    with engine.connect() as conn:
        before = int(conn.execute(lsn).scalar())
    for epoch in range(first_epoch, first_epoch + writes):
        with session_scope(factory) as session:
            runs.record_epoch(session, run_id, EpochMetrics(epoch, 4.0, 0.1, 4.1, 0.1, 1e-3, 60.0),
                              GradFlowEpoch(epoch, layers, values, values), None, owner=owner,
                              lease_seconds=600)
    with engine.connect() as conn:
        return (int(conn.execute(lsn).scalar()) - before) / writes


def raw_bytea_floor(url: str, blob: bytes, repeats: int = 30) -> float:
    """p50 ms of the bare minimum on Postgres: one psycopg upsert of the checkpoint bytes into
    a scratch table, committed (what any design storing the checkpoint per epoch pays)."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    times = []
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE bench_floor (id int PRIMARY KEY, data bytea)")
        conn.execute("ALTER TABLE bench_floor ALTER COLUMN data SET STORAGE EXTERNAL")
        conn.commit()
        for _ in range(repeats):
            started = time.perf_counter()
            conn.execute(
                "INSERT INTO bench_floor VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                (blob,),
            )
            conn.commit()
            times.append(time.perf_counter() - started)
        conn.execute("DROP TABLE bench_floor")
        conn.commit()
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="epochs written per backend")
    parser.add_argument("--database-url", help="time only this (migrated) database")
    args = parser.parse_args()

    blob, layers = vgg38_checkpoint(args.epochs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}, python {platform.python_version()}")
    print(f"epoch write: metrics + {len(layers)} layers x {len(GRADFLOW_STATS)} stats x 2 "
          f"windows + VGG38 checkpoint of {len(blob) / 1e6:.2f} MB; {args.epochs} epochs")

    targets: list[tuple[str, str, Path | None]] = []
    cleanup = []
    if args.database_url:
        targets.append(("given", args.database_url, None))
    else:
        from tests.support.databases import create_postgres_database, drop_postgres_database

        pg = create_postgres_database("gradlab_bench")
        cleanup.append(lambda: drop_postgres_database(pg))
        migrate.upgrade(pg)
        targets.append(("postgres", pg, None))
        folder = Path(tempfile.mkdtemp(prefix="gradlab-bench-"))
        sqlite_url = f"sqlite:///{folder / 'bench.db'}"
        migrate.upgrade(sqlite_url)
        targets.append(("sqlite", sqlite_url, folder))
    try:
        for name, url, _ in targets:
            f = time_writes(url, args.epochs, blob, layers)
            print(f"{name:>8}: p50 {f['p50_ms']:.1f} ms, p95 {f['p95_ms']:.1f} ms, "
                  f"mean {f['mean_ms']:.1f} ms per epoch write "
                  f"(without the checkpoint: p50 {f['p50_no_checkpoint_ms']:.1f} ms, "
                  f"WAL {f['wal_bytes_per_write']:.0f} bytes)")
            if url.startswith("postgresql"):
                print(f"{'':>8}  floor: a bare psycopg upsert of the same bytes, committed: "
                      f"p50 {raw_bytea_floor(url, blob):.1f} ms")
    finally:
        for undo in cleanup:
            undo()


if __name__ == "__main__":
    main()
