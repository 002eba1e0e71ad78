"""Server-sent events under load: N browsers follow one running experiment on a real uvicorn
(PostgreSQL, default feed settings: one poll per second), while a run records epochs.

Prints the delay from an epoch's commit to its event at each client (p50, p95, max), the
events delivered, and the change feed's database reads against the time elapsed.

    python bench/events_load.py [--streams 100] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradlab.store import migrate
from gradlab.store.session import make_engine, make_session_factory
from tests.service.conftest import StoreWorker
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.processes import start_api
from tests.support.prometheus import value


def follow(url: str, received: list[tuple[int, float]], ready: threading.Barrier,
           done: threading.Event) -> None:
    with httpx.stream("GET", url, timeout=120) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("event: snapshot"):
                break
        ready.wait()
        event = None
        for line in lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "epoch":
                epoch = int(line.split('"epoch":')[1].split(",")[0])
                received.append((epoch, time.time()))
            if done.is_set():
                return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    db = create_postgres_database("gradlab_bench_events")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env |= {"GRADLAB_DATABASE_URL": db, "GRADLAB_LOG_FORMAT": "json"}
    try:
        migrate.upgrade(db, "head")
        api, url = start_api(env, Path("/tmp"), name="bench-events-api")
        engine = make_engine(db)
        worker = StoreWorker(make_session_factory(engine))
        spec = {"name": "bench", "depth": 8, "width": 8, "seeds": [0],
                "hyperparameters": {"epochs": args.epochs}}
        created = httpx.post(f"{url}/experiments", json=spec).json()
        run_id = created["runs"][0]["id"]
        worker.claim(run_id)
        received: list[tuple[int, float]] = []
        ready, done = threading.Barrier(args.streams + 1), threading.Event()
        stream_url = f"{url}/experiments/{created['id']}/events"
        threads = [threading.Thread(target=follow, args=(stream_url, received, ready, done),
                                    daemon=True) for _ in range(args.streams)]
        for thread in threads:
            thread.start()
        ready.wait(timeout=120)
        polls_before = value(httpx.get(f"{url}/metrics").text, "gradlab_change_feed_polls_total")
        started = time.monotonic()
        committed: dict[int, float] = {}
        for epoch in range(args.epochs):
            worker.epoch(run_id, 0, epoch)
            committed[epoch] = time.time()
            time.sleep(1.5)
        time.sleep(2)
        elapsed = time.monotonic() - started
        polls = value(httpx.get(f"{url}/metrics").text, "gradlab_change_feed_polls_total")
        done.set()
        delays = sorted(t - committed[e] for e, t in received)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print(f"{args.streams} streams, {args.epochs} epochs: {len(received)} epoch events "
              f"delivered of {args.streams * args.epochs}")
        q = statistics.quantiles(delays, n=20)
        print(f"commit -> event: p50 {statistics.median(delays) * 1000:.0f} ms, "
              f"p95 {q[18] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
        print(f"change feed: {polls - polls_before:.0f} database polls in {elapsed:.1f} s "
              f"({(polls - polls_before) / elapsed:.2f}/s for all {args.streams} streams)")
        api.stop()
        engine.dispose()
    finally:
        drop_postgres_database(db)


if __name__ == "__main__":
    main()
