"""Load benchmark of the HTTP API on PostgreSQL, against a real uvicorn process.

Setup: a throwaway PostgreSQL database (migrated), holding one finished VGG38 experiment of 4
seeds x 100 epochs (rows inserted directly, no training), and a uvicorn process serving
``create_app`` with a no-op dispatcher (so POST /experiments stores runs but trains nothing).

Measures, with httpx:
- ``GET /experiments/{id}/gradflow``: latency p50/p95 with one client; req/s and p95 with 50
  concurrent clients.
- ``POST /experiments`` (a VGG38 spec with 4 seeds): the same.

Targets (issue 3, on 2 cores): gradflow p50 <= 20 ms and >= 150 req/s at 50 clients with no
errors; POST p50 <= 15 ms and >= 200 req/s at 50 clients. The client runs on the same machine,
so it competes with the server for the cores; the table says how many there were.

    .venv/bin/python bench/api_load.py [--requests 1000] [--concurrency 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.support / tests.api helpers when run as a script

from db_probes import process_cpu_seconds  # noqa: E402  (bench/ is on sys.path as a script)

SEEDS = (0, 256, 512, 1024)
EPOCHS = 100


class NoOpDispatcher:
    """Accepts run ids and trains nothing: the benchmark measures the API, not training."""

    def dispatch(self, run_ids: Sequence[str]) -> None:
        return None


def serve(database_url: str, port: int) -> None:
    """The server process: the real app on uvicorn, with the no-op dispatcher."""
    import uvicorn

    from gradlab.api.app import create_app
    from gradlab.settings import ApiSettings

    app = create_app(ApiSettings(database_url=database_url, broker_url=None), NoOpDispatcher())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def seed_store(database_url: str) -> str:
    """Insert the finished VGG38 experiment; returns its id."""
    from gradlab.science.layers import layer_names as layer_names_for
    from gradlab.science.spec import ExperimentSpec
    from gradlab.store.session import make_engine, make_session_factory
    from tests.api.synthetic_rows import insert_experiment

    spec = ExperimentSpec(name="bench-vgg38", depth=38, seeds=list(SEEDS))
    engine = make_engine(database_url)
    try:
        experiment_id, _ = insert_experiment(
            make_session_factory(engine), spec, layer_names_for(spec), epochs=EPOCHS
        )
    finally:
        engine.dispose()
    return experiment_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API process exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API did not answer /healthz within {timeout:.0f} s")


@dataclass
class Result:
    name: str
    clients: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    server_cpu_s: float = float("nan")
    client_cpu_s: float = float("nan")

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _load(
    name: str,
    server_pid: int,
    base_url: str,
    method: str,
    path: str,
    body: Any,
    *,
    requests: int,
    clients: int,
    expect: int,
) -> Result:
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def one_client() -> None:
        # One AsyncClient with one keep-alive connection per simulated user: like 50 real
        # clients, and it avoids contention in a single shared httpx pool, which would make
        # the client (on the same cores) the bottleneck.
        nonlocal remaining, errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:
            await client.get("/healthz")  # connect before the clock starts
            await ready.wait()
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await client.request(method, path, json=body)
                    await response.aread()
                    ok = response.status_code == expect
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

    ready = asyncio.Event()
    tasks = [asyncio.create_task(one_client()) for _ in range(clients)]
    await asyncio.sleep(0.5)
    server_cpu = process_cpu_seconds(server_pid)
    client_cpu = time.process_time()
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_cpu = process_cpu_seconds(server_pid) - server_cpu
    ms = [s * 1000 for s in latencies]
    return Result(
        name,
        clients,
        len(ms),
        errors,
        seconds,
        percentile(ms, 0.5),
        percentile(ms, 0.95),
        server_cpu,
        client_cpu,
    )


def machine_description() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _table(results: list[Result], machine: dict[str, Any]) -> str:
    lines = [
        f"machine: {machine['usable_cores']} usable cores ({machine['cpu_count']} total), "
        f"load {machine['load_average_1m']:.2f} at start, {machine['platform']}; "
        "client and server share these cores",
        f"{'benchmark':<24}{'clients':>8}{'requests':>10}{'errors':>8}{'req/s':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'server CPU ms/req':>19}{'client CPU ms/req':>19}",
    ]
    for r in results:
        lines.append(
            f"{r.name:<24}{r.clients:>8}{r.requests:>10}{r.errors:>8}{r.req_per_s:>9.1f}"
            f"{r.p50_ms:>9.2f}{r.p95_ms:>9.2f}"
            f"{1000 * r.server_cpu_s / r.requests:>19.2f}"
            f"{1000 * r.client_cpu_s / r.requests:>19.2f}"
        )
    return "\n".join(lines)


async def _run_all(
    server_pid: int, base_url: str, experiment_id: str, args: argparse.Namespace
) -> list[Result]:
    gradflow = f"/experiments/{experiment_id}/gradflow"
    spec = {"name": "bench-post", "depth": 38, "seeds": list(SEEDS)}
    results = []
    # warm-up: fills the finished experiment's cache and the connection pool
    await _load(
        "warm-up", server_pid, base_url, "GET", gradflow, None, requests=20, clients=4, expect=200
    )
    await _load(
        "warm-up",
        server_pid,
        base_url,
        "POST",
        "/experiments",
        spec,
        requests=20,
        clients=4,
        expect=201,
    )
    for name, method, path, body, expect in (
        ("GET gradflow", "GET", gradflow, None, 200),
        ("POST /experiments", "POST", "/experiments", spec, 201),
    ):
        for clients in (1, args.concurrency):
            results.append(
                await _load(
                    name,
                    server_pid,
                    base_url,
                    method,
                    path,
                    body,
                    requests=args.requests,
                    clients=clients,
                    expect=expect,
                )
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--database-url",
        help="a migrated, empty Postgres database (default: a throwaway one, dropped at the end)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--serve", nargs=2, metavar=("DATABASE_URL", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0

    from gradlab.store import migrate
    from tests.support.databases import create_postgres_database, drop_postgres_database

    machine = machine_description()
    throwaway = args.database_url is None
    database_url = args.database_url or create_postgres_database("gradlab_bench")
    process: subprocess.Popen[bytes] | None = None
    try:
        if throwaway:
            migrate.upgrade(database_url, "head")
        started = time.perf_counter()
        experiment_id = seed_store(database_url)
        print(
            f"stored a finished VGG38 experiment, {len(SEEDS)} seeds x {EPOCHS} epochs, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", database_url, str(port)], cwd=ROOT
        )
        _wait_ready(base_url, process)
        size = len(httpx.get(f"{base_url}/experiments/{experiment_id}/gradflow").content)
        print(f"gradflow response: {size / 1024:.0f} KiB")
        results = asyncio.run(_run_all(process.pid, base_url, experiment_id, args))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        if throwaway:
            drop_postgres_database(database_url)
    print(_table(results, machine))
    if args.json:
        payload = {
            "machine": machine,
            "results": [asdict(r) | {"req_per_s": r.req_per_s} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
