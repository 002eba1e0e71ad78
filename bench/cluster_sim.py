"""Cluster simulation: many runs on one PostgreSQL, through the worker's real code path.

N simulated runs train nothing: a stand-in for the training loop emits synthetic epochs of
VGG38's shape (metrics, gradient flow of 39 layers, or 75 with --batch-norm, a checkpoint of
--checkpoint-mb) every --epoch-seconds. Everything else is the worker's own code
(``gradlab.worker.runner.execute_run``): claim with a lease, heartbeat, each epoch written in
one transaction fenced on the lease with the reference to a checkpoint saved in the
configured store at its cadence (--checkpoint-seconds), the cancel check, finish, next run.
M API clients read gradient flow and lists over real HTTP (uvicorn on 127.0.0.1, a refresh
every --read-interval each), the reaper sweeps every 5 s; all through a private PgBouncer
(transaction pooling) unless --no-pgbouncer. Bounded in time: --warmup, then --duration
measured seconds; then the simulated workers are killed.

    .venv/bin/python bench/cluster_sim.py --runs 300 --epoch-seconds 6 --readers 20 \\
        --duration 60 --json     # one point: its figures as JSON
    .venv/bin/python bench/cluster_sim.py --epoch-seconds 6 --readers 20 --duration 60
                                 # sweeps N (--sweep 50,100,200,300,400) and names the knee

Each point gets a fresh throwaway database on 127.0.0.1:5432 (user postgres), dropped after.
Prints the figures and the machine with its load (it may be shared); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import queue
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support (databases, PgBouncer) when run as a script

from api_load import machine_description, percentile  # noqa: E402
from db_probes import (  # noqa: E402
    DatabaseProbe,
    process_cpu_seconds,
    table_sizes,
    wal_lsn,
)

from gradlab.science.records import (  # noqa: E402
    OUTCOME_OF_DECISION,
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TestResult,
    TrainingResult,
)
from gradlab.settings import WorkerSettings  # noqa: E402
from gradlab.store.checkpoint_store import CheckpointRef, CheckpointStore  # noqa: E402

DEFAULT_SWEEP = (50, 100, 200, 300, 400)
GOAL_P95_MS = 100.0
EPOCHS_PER_REAL_RUN = 100  # the seed study's VGG38, for the growth per 1,000 runs
CHECKPOINT_MAGIC = b"GRADLAB-SIM"
REAP_SECONDS = 5.0
LIST_EVERY = 10  # one list read per this many reads of a reader


class SimulationOver(BaseException):
    """Raised in a simulated run at the deadline: leaves ``execute_run`` at once, writing
    nothing more (a BaseException, so the worker neither records it as a failure nor hands
    the run back)."""


@dataclass
class Point:
    """One measured configuration."""

    runs: int
    epoch_seconds: float
    readers: int
    duration: float
    warmup: float
    read_interval: float
    batch_norm: bool
    store: str
    checkpoint_mb: float
    checkpoint_seconds: float
    workers: int
    pool_size: int
    api_pool_size: int
    server_connections: int
    pgbouncer: bool
    epochs_per_run: int
    seeds_per_experiment: int


# ---------------------------------------------------------------------------------------------
# The stand-in for the training loop


def synthetic_epoch(seed: int, epoch: int, layers: tuple[str, ...],
                    seconds: float) -> tuple[EpochMetrics, GradFlowEpoch]:
    """Numbers that depend only on (seed, epoch): a replayed epoch writes the same ones."""
    rng = random.Random(seed * 100_003 + epoch)
    metrics = EpochMetrics(epoch, rng.uniform(1, 5), rng.random(), rng.uniform(1, 5),
                           rng.random(), 1e-3, seconds)
    windows = [{s: [rng.lognormvariate(-7, 2) for _ in layers]
                for s in ("mean_abs", "max_abs", "l2")} for _ in range(2)]
    return metrics, GradFlowEpoch(epoch, layers, windows[0], windows[1])


def simulated_checkpoint(epoch: int, payload: bytes) -> bytes:
    return CHECKPOINT_MAGIC + struct.pack("<q", epoch) + payload


def simulated_checkpoint_epoch(blob: bytes) -> int:
    if not blob.startswith(CHECKPOINT_MAGIC):
        raise ValueError("not a simulated checkpoint")
    return int(struct.unpack_from("<q", blob, len(CHECKPOINT_MAGIC))[0])


class CountingStore(CheckpointStore):
    """The configured store; notes in the calling thread whether it saved a checkpoint."""

    def __init__(self, store: CheckpointStore):
        super().__init__(store.objects)
        self.local = threading.local()

    def save(self, run_id: str, epoch: int, attempt: int, data: bytes) -> CheckpointRef:
        self.local.saved = True
        return super().save(run_id, epoch, attempt, data)


@dataclass
class Slot:
    """One simulated GPU: trains one run after another, an epoch every ``epoch_seconds``
    (its first at ``next_epoch_at``), and times each epoch write."""

    epoch_seconds: float
    next_epoch_at: float
    deadline: float
    payload: bytes
    store: CountingStore
    writes: list[tuple[float, float, bool]] = field(default_factory=list)

    def fit(self, runs: list[Any], _data: Any, *, device: str,
            **_: Any) -> list[TrainingResult]:
        """``gradlab.core.pack.fit_pack``'s signature and epoch callbacks for a pack of one
        (the simulated device trains one run at a time), no training."""
        (run,) = runs
        return [self._fit_one(run.spec, run.seed, run.on_epoch_end, run.resume_from, device)]

    def _fit_one(self, spec: Any, seed: int, on_epoch_end: Any, resume_from: bytes | None,
                 device: str) -> TrainingResult:
        from gradlab.science.layers import layer_names

        layers = tuple(layer_names(spec))
        start = 0 if resume_from is None else simulated_checkpoint_epoch(resume_from) + 1
        for epoch in range(start, spec.hyperparameters.epochs):
            self._wait_for_next_epoch()
            metrics, gradflow = synthetic_epoch(seed, epoch, layers, self.epoch_seconds)
            self.store.local.saved = False
            started = time.perf_counter()
            decision = on_epoch_end(metrics, gradflow,
                                    lambda e=epoch: simulated_checkpoint(e, self.payload))
            self.writes.append((time.time(), 1000 * (time.perf_counter() - started),
                                self.store.local.saved))
            if decision is not EpochDecision.CONTINUE:
                return TrainingResult(status=OUTCOME_OF_DECISION[decision], layers=layers)
        return TrainingResult(status=RunOutcome.SUCCEEDED, layers=layers,
                              test=TestResult(loss=2.0, acc=0.5, best_epoch=0),
                              environment={"device": device, "simulated": True})

    def cadence(self, settings: WorkerSettings) -> Any:
        """A GPU's: the simulated device is a GPU, whatever this machine has."""
        from gradlab.worker.checkpointing import cadence_for

        return cadence_for("cuda", settings)

    def _wait_for_next_epoch(self) -> None:
        if self.next_epoch_at > self.deadline:
            raise SimulationOver
        time.sleep(max(0.0, self.next_epoch_at - time.time()))
        self.next_epoch_at += self.epoch_seconds


# ---------------------------------------------------------------------------------------------
# Simulated worker machines (processes) and API readers (a process)


def worker_process(index: int, slots: int, settings_json: dict[str, Any], epoch_seconds: float,
                   checkpoint_bytes: int, run_ids: list[str], clock: Any, results: Any) -> None:
    """A worker machine with ``slots`` GPUs sharing one engine (one connection pool), training
    ``run_ids`` (this machine's share) one after another on each GPU."""
    from gradlab.core.environment import resolve_device  # noqa: F401  (torch, before the clock)
    from gradlab.store.checkpoint_store import open_checkpoint_store
    from gradlab.store.session import engine_from_settings, make_session_factory
    from gradlab.worker.runner import execute_run

    os.environ.setdefault("GRADLAB_GIT_REVISION", "simulation")  # as images set it
    settings = WorkerSettings(**settings_json)
    engine = engine_from_settings(settings)
    factory = make_session_factory(engine)
    store = CountingStore(open_checkpoint_store(settings, factory))
    payload = os.urandom(checkpoint_bytes)
    results.put(("ready", index))
    # A queue of this process's own: a slot that finds it empty has truly run out of runs. (One
    # queue shared by every process made 300 threads contend for its lock at the start; a get
    # that waited over its timeout ended its slot, and a fifth of the simulated GPUs idled.)
    todo: queue.Queue[str] = queue.Queue()
    for run_id in run_ids:
        todo.put(run_id)
    start_at, deadline = clock.get(timeout=600)
    rng = random.Random(index)
    errors: list[str] = []

    def train_runs(slot: Slot, name: str) -> None:
        while time.time() < deadline:
            try:
                run_id = todo.get_nowait()
            except queue.Empty:
                return
            try:
                execute_run(run_id, factory, lambda _: None, "cpu", settings=settings,
                            worker=name, checkpoints=store, cadence=slot.cadence(settings),
                            training_loop=slot.fit)
            except SimulationOver:
                return
            except Exception as exc:  # counted and reported; the slot goes on
                errors.append(f"{type(exc).__name__}: {exc}")

    machine = [Slot(epoch_seconds, start_at + rng.uniform(0, epoch_seconds), deadline, payload,
                    store) for _ in range(slots)]
    threads = [threading.Thread(target=train_runs, args=(slot, f"sim{index}-{j}"), daemon=True)
               for j, slot in enumerate(machine)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.time() + 30))
    writes = [w for slot in machine for w in slot.writes]
    results.put(("done", {"writes": writes, "errors": errors[:10], "error_count": len(errors)}))


def reader_process(base_url: str, readers: int, interval: float, clock: Any,
                   results: Any) -> None:
    """M dashboard clients: gradient flow of running experiments, and their list."""
    results.put(("ready", "readers"))
    start_at, deadline = clock.get(timeout=600)
    samples = asyncio.run(_read_until(base_url, readers, interval, start_at, deadline))
    results.put(("done", {"reads": samples}))


async def _read_until(base_url: str, readers: int, interval: float, start_at: float,
                      deadline: float) -> list[tuple[float, str, float, bool]]:
    samples: list[tuple[float, str, float, bool]] = []

    async def client(index: int) -> None:
        rng = random.Random(index)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            await asyncio.sleep(max(0.0, start_at - time.time()) + rng.uniform(0, interval))
            running: list[str] = []
            count = 0
            while time.time() < deadline:
                listing = count % LIST_EVERY == 0 or not running
                path = ("/experiments?status=running&limit=100" if listing
                        else f"/experiments/{rng.choice(running)}/gradflow")
                started = time.perf_counter()
                try:
                    response = await http.get(path)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok, response = False, None
                samples.append((time.time(), "list" if listing else "gradflow",
                                1000 * (time.perf_counter() - started), ok))
                if listing and ok and response is not None:
                    running = [item["id"] for item in response.json()["items"]]
                count += 1
                await asyncio.sleep(interval)

    await asyncio.gather(*(client(i) for i in range(readers)))
    return samples


# ---------------------------------------------------------------------------------------------
# One point: database, services, processes, measurements


def _settings(point: Point, database_url: str, folder: Path) -> WorkerSettings:
    stores = {"database": "database", "filesystem": str(folder / "checkpoints")}
    return WorkerSettings(
        database_url=database_url,
        database_pooler="pgbouncer" if point.pgbouncer else "none",
        database_pool_size=point.pool_size,
        database_max_overflow=point.pool_size,
        checkpoint_store=stores[point.store],
        checkpoint_seconds=point.checkpoint_seconds,
    )


def _create_runs(factory: Any, point: Point) -> tuple[int, list[str]]:
    """Enough queued runs for every slot to train through the whole time, seeds of one
    experiment handed out together (the readers see experiments of several runs)."""
    from gradlab.science.spec import ExperimentSpec
    from gradlab.store.experiments import create_experiment
    from gradlab.store.session import session_scope

    run_seconds = point.epochs_per_run * point.epoch_seconds
    per_slot = math.ceil((point.warmup + point.duration) / run_seconds) + 1
    experiments = math.ceil(point.runs * per_slot / point.seeds_per_experiment)
    spec = ExperimentSpec(name="sim", depth=38, batch_norm=point.batch_norm,
                          hyperparameters={"epochs": point.epochs_per_run},
                          seeds=list(range(point.seeds_per_experiment)))
    run_ids: list[str] = []
    with session_scope(factory) as session:
        for _ in range(experiments):
            run_ids += [run.id for run in create_experiment(session, spec).runs]
    return experiments, run_ids


class Services:
    """The API (uvicorn) and the reaper of one point, started and stopped together."""

    def __init__(self, settings: WorkerSettings, api_pool_size: int, log_dir: Path):
        from tests.support.processes import free_port

        self.port = free_port()
        env = {**os.environ, **_environment(settings),
               "GRADLAB_DATABASE_POOL_SIZE": str(api_pool_size)}
        self.log = (log_dir / "api.log").open("wb")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "gradlab.api.app:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log"], env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._halt = threading.Event()
        self.reaper = threading.Thread(target=self._reap, args=(settings,), daemon=True)

    def start(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.api.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    self.reaper.start()
                    return
            time.sleep(0.5)
        raise RuntimeError("the API did not start (see its log)")

    def _reap(self, settings: WorkerSettings) -> None:
        from gradlab.dispatch.dispatchers import EmbeddedDispatcher
        from gradlab.store.session import engine_from_settings, make_session_factory
        from gradlab.worker.reaper import reap

        engine = engine_from_settings(settings.model_copy(update={"database_pool_size": 1}))
        factory = make_session_factory(engine)
        while not self._halt.wait(REAP_SECONDS):
            with contextlib.suppress(Exception):  # a slow sweep is measured, not fatal
                reap(factory, EmbeddedDispatcher(), settings)
        engine.dispose()

    def stop(self) -> None:
        self._halt.set()
        self.api.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.api.wait(20)
        if self.api.poll() is None:
            self.api.kill()
        self.log.close()


def _environment(settings: WorkerSettings) -> dict[str, str]:
    """GRADLAB_* variables for a process configured like ``settings``."""
    return {f"GRADLAB_{name.upper()}": str(value) for name, value in
            settings.model_dump(mode="json").items() if value is not None}


@dataclass
class Fleet:
    """The simulated worker processes and the readers' process, with their queues (kept
    referenced here: a queue the parent drops is gone before a spawned child opens it)."""

    processes: list[Any]
    clocks: list[Any]
    results: Any

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(10)


def _start_fleet(point: Point, settings: WorkerSettings, run_ids: list[str],
                 base_url: str) -> Fleet:
    ctx = multiprocessing.get_context("spawn")
    fleet = Fleet([], [ctx.Queue() for _ in range(point.workers + 1)], ctx.Queue())
    slots = [point.runs // point.workers + (i < point.runs % point.workers)
             for i in range(point.workers)]
    settings_json = settings.model_dump(mode="json")
    fleet.processes = [ctx.Process(target=worker_process, args=(
        i, slots[i], settings_json, point.epoch_seconds, int(point.checkpoint_mb * 1e6),
        run_ids[i::point.workers], fleet.clocks[i], fleet.results), daemon=True)
        for i in range(point.workers)]
    fleet.processes.append(ctx.Process(target=reader_process, args=(
        base_url, point.readers, point.read_interval, fleet.clocks[-1], fleet.results),
        daemon=True))
    for process in fleet.processes:
        process.start()
    return fleet


def _collect(results: Any, kind: str, count: int, timeout: float) -> list[Any]:
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            message, body = results.get(timeout=1.0)
            if message == kind:
                found.append(body)
    return found


def measure(point: Point, bouncer: Any | None) -> dict[str, Any]:
    """Run one point on a fresh database and return its figures."""
    from gradlab.store import migrate
    from gradlab.store.session import make_engine, make_session_factory
    from tests.support.databases import admin_url, create_postgres_database, drop_postgres_database

    direct_url = create_postgres_database("gradlab_sim")
    folder = Path(tempfile.mkdtemp(prefix="gradlab-sim-"))
    fleet: Fleet | None = None
    services: Services | None = None
    try:
        migrate.upgrade(direct_url)
        direct = make_engine(direct_url)
        experiments, run_ids = _create_runs(make_session_factory(direct), point)
        direct.dispose()  # only PgBouncer's connections to this database while measuring
        url = bouncer.url_for(direct_url) if bouncer is not None else direct_url
        settings = _settings(point, url, folder)
        services = Services(settings, point.api_pool_size, folder)
        services.start()
        fleet = _start_fleet(point, settings, run_ids, services.base_url)
        ready = _collect(fleet.results, "ready", len(fleet.processes), 300)
        if len(ready) < len(fleet.processes):
            raise RuntimeError(f"only {len(ready)} of {len(fleet.processes)} processes started")
        start_at = time.time() + 1.0
        window = (start_at + point.warmup, start_at + point.warmup + point.duration)
        for clock in fleet.clocks:
            clock.put((start_at, window[1]))
        pids = {"api": [services.api.pid], "readers": [fleet.processes[-1].pid],
                "sim_workers": [p.pid for p in fleet.processes[:-1]]}
        figures = _observe(point, window, direct_url, admin_url(), bouncer, fleet.results,
                           pids)
        figures.update(experiments=experiments, runs_created=len(run_ids))
        figures.update(_growth(direct_url, direct, len(run_ids)))
        return figures
    finally:
        if fleet is not None:
            fleet.kill()
        if services is not None:
            services.stop()
        drop_postgres_database(direct_url)
        shutil.rmtree(folder, ignore_errors=True)


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(process_cpu_seconds(pid) for pid in group) for name, group in pids.items()}


def _observe(point: Point, window: tuple[float, float], direct_url: str, admin: str,
             bouncer: Any | None, results: Any, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Wait through the warm-up, measure the window, gather the processes' samples."""
    from sqlalchemy.engine import make_url

    time.sleep(max(0.0, window[0] - time.time()))
    probe = DatabaseProbe(_libpq(admin), make_url(direct_url).database,
                          None if bouncer is None else bouncer.process.pid)
    wal_before = wal_lsn(_libpq(admin))
    load_before = os.getloadavg()[0]
    cpu_before = _cpu(pids)
    probe.start()
    time.sleep(max(0.0, window[1] - time.time()))
    probe.stop()
    cpu = {k: v - cpu_before[k] for k, v in _cpu(pids).items()}
    wal_bytes = wal_lsn(_libpq(admin)) - wal_before
    # A "done" from each simulated worker and the readers' process (the API sends none: counting
    # it waited out the whole timeout, 120 s, after every point).
    reporting = len(pids["sim_workers"]) + len(pids["readers"])
    done = _collect(results, "done", reporting, 120)
    writes = [w for d in done for w in d.get("writes", []) if window[0] <= w[0] <= window[1]]
    reads = [r for d in done for r in d.get("reads", []) if window[0] <= r[0] <= window[1]]
    seconds = window[1] - window[0]
    summary = _summary(point, writes, reads, seconds)
    return {
        **summary,
        "write_errors": sum(d.get("error_count", 0) for d in done),
        "write_error_examples": [e for d in done for e in d.get("errors", [])][:5],
        "processes_reported": len(done),
        "db_backends_cpu_cores": probe.backends.total / seconds,
        "postgres_all_cpu_cores": probe.postgres.total / seconds,
        "pgbouncer_cpu_cores": probe.pgbouncer.total / seconds,
        **{f"{name}_cpu_cores": used / seconds for name, used in cpu.items()},
        # per operation: less sensitive to a shared machine than latencies are
        "db_cpu_ms_per_epoch_write": 1000 * probe.backends.total / max(len(writes), 1),
        "worker_cpu_ms_per_epoch_write": 1000 * cpu["sim_workers"] / max(len(writes), 1),
        "api_cpu_ms_per_read": 1000 * cpu["api"] / max(len(reads), 1),
        "wal_bytes_per_s": wal_bytes / seconds,
        "server_connections_max": probe.max_connections,
        # pool + overflow of every worker process, the API and the reaper
        "client_connections_capacity": 2 * (point.workers * point.pool_size
                                            + point.api_pool_size + 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _ms(values: list[float], q: float) -> float | None:
    """A percentile in ms, None (JSON null) when nothing was measured."""
    return round(percentile(values, q), 2) if values else None


def _summary(point: Point, writes: list[Any], reads: list[Any],
             seconds: float) -> dict[str, Any]:
    write_ms = [w[1] for w in writes]
    checkpoint_ms = [w[1] for w in writes if w[2]]
    flow = [r[2] for r in reads if r[1] == "gradflow" and r[3]]
    lists = [r[2] for r in reads if r[1] == "list" and r[3]]
    return {
        **{k: v for k, v in asdict(point).items()},
        "layers": 75 if point.batch_norm else 39,
        "offered_epoch_writes_per_s": point.runs / point.epoch_seconds,
        "epoch_writes": len(writes),
        "epoch_writes_per_s": len(writes) / seconds,
        "epoch_write_p50_ms": _ms(write_ms, 0.5),
        "epoch_write_p95_ms": _ms(write_ms, 0.95),
        "epoch_write_p99_ms": _ms(write_ms, 0.99),
        "checkpoints_written": len(checkpoint_ms),
        "epoch_write_with_checkpoint_p95_ms": _ms(checkpoint_ms, 0.95),
        "gradflow_reads_per_s": len(flow) / seconds,
        "gradflow_read_p50_ms": _ms(flow, 0.5),
        "gradflow_read_p95_ms": _ms(flow, 0.95),
        "list_read_p50_ms": _ms(lists, 0.5),
        "list_read_p95_ms": _ms(lists, 0.95),
        "read_errors": sum(1 for r in reads if not r[3]),
    }


def _growth(direct_url: str, engine: Any, runs_created: int) -> dict[str, Any]:
    """Bytes the tables hold per epoch written (per run for ``runs``), and for 1,000 runs of
    the real length. ``checkpoint_objects`` is not growth: one or two objects per live run."""
    from sqlalchemy import func, select

    from gradlab.store.models import EpochMetricsRow

    with engine.connect() as conn:
        epochs = conn.scalar(select(func.count()).select_from(EpochMetricsRow)) or 0
    sizes = table_sizes(_libpq(direct_url))
    per_epoch = {t: (s["table_bytes"] + s["index_bytes"]) / max(epochs, 1)
                 for t, s in sizes.items() if t in ("epoch_metrics", "gradflow_epochs")}
    run_bytes = (sizes["runs"]["table_bytes"] + sizes["runs"]["index_bytes"]) / runs_created
    per_run = sum(per_epoch.values()) * EPOCHS_PER_REAL_RUN + run_bytes
    return {
        "epochs_in_database": epochs,
        "table_sizes": sizes,
        "bytes_per_epoch": {t: round(b) for t, b in per_epoch.items()},
        "growth_per_1000_runs_gb": per_run * 1000 / 1e9,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def meets_goal(figures: dict[str, Any]) -> bool:
    return (figures["epoch_write_p95_ms"] is not None
            and figures["epoch_write_p95_ms"] <= GOAL_P95_MS
            and (figures["gradflow_read_p95_ms"] or 0.0) <= GOAL_P95_MS
            and figures["epoch_writes_per_s"] >= 0.95 * figures["offered_epoch_writes_per_s"]
            and figures["write_errors"] == 0)


def _row(figures: dict[str, Any]) -> str:
    f = {k: math.nan if v is None else v for k, v in figures.items()}
    return (f"{f['runs']:>5} {f['offered_epoch_writes_per_s']:>7.1f} "
            f"{f['epoch_writes_per_s']:>7.1f} {f['epoch_write_p50_ms']:>7.1f} "
            f"{f['epoch_write_p95_ms']:>7.1f} {f['epoch_write_with_checkpoint_p95_ms']:>8.1f} "
            f"{f['gradflow_read_p50_ms']:>7.1f} {f['gradflow_read_p95_ms']:>7.1f} "
            f"{f['db_backends_cpu_cores']:>6.2f} {f['postgres_all_cpu_cores']:>6.2f} "
            f"{f['wal_bytes_per_s'] / 1e6:>7.2f} {f['server_connections_max']:>5} "
            f"{f['growth_per_1000_runs_gb']:>6.2f} {f['write_errors']:>4} "
            f"{'yes' if meets_goal(figures) else 'no':>4}")


HEADER = (f"{'runs':>5} {'offer/s':>7} {'write/s':>7} {'w p50':>7} {'w p95':>7} "
          f"{'ckpt p95':>8} {'gf p50':>7} {'gf p95':>7} {'dbCPU':>6} {'pgCPU':>6} "
          f"{'WAL MB/s':>7} {'conns':>5} {'GB/1k':>6} {'err':>4} {'goal':>4}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--runs", type=int, help="concurrent runs (without it: sweep --sweep)")
    add("--sweep", default=",".join(map(str, DEFAULT_SWEEP)), help="N values to sweep")
    add("--epoch-seconds", type=float, default=6.0, help="seconds per epoch of each run")
    add("--readers", type=int, default=20, help="API clients reading gradient flow and lists")
    add("--read-interval", type=float, default=1.0, help="each reader's pause between reads")
    add("--duration", type=float, default=60.0, help="measured seconds per point")
    add("--warmup", type=float, help="seconds before measuring (default: 2 epochs)")
    add("--batch-norm", action="store_true", help="VGG38 with BN: 75 layers instead of 39")
    add("--store", choices=("filesystem", "database"), default="filesystem",
        help="checkpoint store (filesystem: a temporary folder)")
    add("--checkpoint-mb", type=float, default=5.5, help="bytes of one checkpoint (VGG38+Adam)")
    add("--checkpoint-seconds", type=float, default=60.0, help="GRADLAB_CHECKPOINT_SECONDS")
    add("--workers", type=int, default=4, help="simulated worker processes sharing the runs")
    add("--pool-size", type=int, default=5, help="database pool of each worker process")
    add("--api-pool-size", type=int, default=10, help="database pool of the API process")
    add("--server-connections", type=int, default=16, help="PgBouncer's pool per database")
    add("--no-pgbouncer", dest="pgbouncer", action="store_false", help="straight to PostgreSQL")
    add("--epochs-per-run", type=int, default=20, help="epochs of each simulated run")
    add("--seeds-per-experiment", type=int, default=4)
    add("--json", action="store_true", help="print the figures as JSON only")
    return parser.parse_args(argv)


def _point(args: argparse.Namespace, runs: int) -> Point:
    return Point(
        runs=runs, epoch_seconds=args.epoch_seconds, readers=args.readers,
        duration=args.duration, warmup=args.warmup or 2 * args.epoch_seconds,
        read_interval=args.read_interval, batch_norm=args.batch_norm, store=args.store,
        checkpoint_mb=args.checkpoint_mb, checkpoint_seconds=args.checkpoint_seconds,
        workers=max(1, min(args.workers, runs)), pool_size=args.pool_size,
        api_pool_size=args.api_pool_size, server_connections=args.server_connections,
        pgbouncer=args.pgbouncer, epochs_per_run=args.epochs_per_run,
        seeds_per_experiment=args.seeds_per_experiment,
    )


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # runs the clean-ups: processes, PgBouncer, the throwaway database


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from tests.support.pgbouncer import PgBouncer

    sweep = [args.runs] if args.runs else [int(n) for n in args.sweep.split(",")]
    machine = machine_description()
    bouncer = PgBouncer(pool_size=args.server_connections) if args.pgbouncer else None
    points: list[dict[str, Any]] = []
    try:
        if not args.json:
            print(f"machine: {machine['usable_cores']} cores, load {machine['load_average_1m']:.2f}"
                  f" at start, {machine['platform']}; everything shares these cores")
            print(HEADER)
        for runs in sweep:
            figures = measure(_point(args, runs), bouncer)
            points.append(figures)
            if not args.json:
                print(_row(figures), flush=True)
    finally:
        if bouncer is not None:
            bouncer.stop()
    knee = next((p["runs"] for p in points if not meets_goal(p)), None)
    if args.json:
        print(json.dumps(points[0] | {"machine": machine} if args.runs else
                         {"machine": machine, "points": points, "knee_runs": knee}, indent=2))
    elif not args.runs:
        print(f"knee: {'beyond ' + str(sweep[-1]) if knee is None else knee} runs "
              f"(first N missing the goal: p95 <= {GOAL_P95_MS:.0f} ms, all writes sustained)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
