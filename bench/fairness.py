"""Fairness under one user's heaviest load: while alice drives the mix the limits allow (PNG
gradient-flow renders that all miss the cache, studies of 64 runs submitted and cancelled,
resubmits of a study whose runs keep failing), bob lists his experiments
(`GET /experiments?limit=1`) and follows his experiment's event stream while a run records an
epoch every second. A real uvicorn (auth on, default settings: one poll a second) on a fresh
PostgreSQL database; the clients run on the same machine.

Prints, for bob alone and then for bob while alice saturates the server (side by side, one
run): his list latency (p50, p95, max; target p95 < 200 ms) and the delay from an epoch's
commit to its event at his client (p50, p95, max; target < 3 s), and what alice got through.

    .venv/bin/python bench/fairness.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradlab.store import migrate
from gradlab.store.session import make_engine, make_session_factory
from tests.service.conftest import StoreWorker
from tests.service.test_fair_streams import (
    _alice_load,
    _follow,
    _percentile,
    _person,
    _wait_for,
)
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.processes import start_api

SPEC = {"depth": 8, "width": 8, "hyperparameters": {"epochs": 1000, "batch_size": 50},
        "data": {"train_limit": 200, "val_limit": 100, "test_limit": 100}}


def _setup(api: str, worker: StoreWorker, store: object) -> tuple[dict[str, object], ...]:
    alice, bob = _person(store), _person(store)  # type: ignore[arg-type]
    theirs = httpx.post(f"{api}/experiments", json={**SPEC, "name": "alice-plots",
                                                    "seeds": [0, 1, 2, 3]},
                        headers=alice.headers).json()
    for run in theirs["runs"]:
        worker.claim(run["id"])
        for epoch in range(100):
            worker.epoch(run["id"], run["seed"], epoch)
    study = {"name": "alice-resubmits", "base": {**SPEC, "hyperparameters": {"epochs": 1}},
             "grid": {"batch_norm": [False, True]}, "seeds": [0, 1]}
    study_id = httpx.post(f"{api}/studies", json=study, headers=alice.headers).json()["id"]
    cells = httpx.get(f"{api}/studies/{study_id}", headers=alice.headers).json()["cells"]
    mine = httpx.post(f"{api}/experiments", json={**SPEC, "name": "bob", "seeds": [0]},
                      headers=bob.headers).json()
    return (dict(alice=alice, bob=bob, theirs=theirs["id"], study=study_id,
                 cells=[c["experiment_id"] for c in cells], mine=mine),)


@dataclass
class Phase:
    latencies: list[float]
    delays: list[float]
    epochs: int

    def show(self, name: str) -> None:
        lat = self.latencies
        print(f"{name}: GET /experiments?limit=1 n={len(lat)} "
              f"p50={statistics.median(lat) * 1000:.0f} ms p95={_percentile(lat, 0.95) * 1000:.0f} "
              f"ms max={max(lat) * 1000:.0f} ms; epoch commit to delivery n={len(self.delays)} "
              f"p50={statistics.median(self.delays):.2f} s "
              f"p95={_percentile(self.delays, 0.95):.2f} s max={max(self.delays):.2f} s")


def _bob(api: str, bob: Any, worker: StoreWorker, run_id: str, stream: Any, seconds: float,
         first_epoch: int) -> Phase:
    """Bob lists every 0.2 s and commits an epoch every second; each epoch's delay is read
    from his stream once the phase is over."""
    latencies: list[float] = []
    committed: list[float] = []
    epoch = first_epoch
    started = time.monotonic()
    next_epoch = started
    with httpx.Client(base_url=api, headers=bob.headers, timeout=60) as client:
        while time.monotonic() - started < seconds:
            begin = time.perf_counter()
            assert client.get("/experiments", params={"limit": 1}).status_code == 200
            latencies.append(time.perf_counter() - begin)
            if time.monotonic() >= next_epoch:
                worker.epoch(run_id, 0, epoch)
                committed.append(time.time())
                epoch += 1
                next_epoch += 1.0
            time.sleep(0.2)
    _wait_for("bob's last epoch", lambda: sum(1 for k, _, _ in stream.events
                                              if k == "epoch") >= epoch)
    received = [t for k, _, t in stream.events if k == "epoch"][first_epoch:epoch]
    return Phase(latencies, [r - c for c, r in zip(committed, received, strict=True)], epoch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="of each phase")
    args = parser.parse_args()
    db = create_postgres_database("gradlab_bench_fair")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env |= {"GRADLAB_DATABASE_URL": db, "GRADLAB_LOG_FORMAT": "json",
            "GRADLAB_AUTH_REQUIRED": "true"}
    engine = None
    process = None
    try:
        migrate.upgrade(db, "head")
        engine = make_engine(db)
        store = make_session_factory(engine)
        process, api = start_api(env, Path("/tmp"), name="bench-fairness-api")
        worker = StoreWorker(store)
        (s,) = _setup(api, worker, store)
        bob, bob_run = s["bob"], s["mine"]["runs"][0]["id"]  # type: ignore[index]
        worker.claim(bob_run)
        stream = _follow(f"{api}/experiments/{s['mine']['id']}/events", bob.headers)  # type: ignore[attr-defined,index]

        alone = _bob(api, bob, worker, bob_run, stream, args.seconds, first_epoch=0)
        stop = threading.Event()
        alice_counts: dict[str, dict[str, int]] = {}
        load = threading.Thread(target=lambda: alice_counts.setdefault("alice", _alice_load(
            api, s["alice"], s["theirs"], s["study"], s["cells"], store, stop)))  # type: ignore[arg-type]
        load.start()
        try:
            loaded = _bob(api, bob, worker, bob_run, stream, args.seconds,
                          first_epoch=alone.epochs)
        finally:
            stop.set()
            load.join()
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, shared with other jobs")
        print(f"alice ({args.seconds:.0f} s): {alice_counts.get('alice')}")
        for name, phase in (("bob alone", alone), ("bob while alice saturates", loaded)):
            phase.show(name)
    finally:
        if process is not None:
            process.stop()
        if engine is not None:
            engine.dispose()
        drop_postgres_database(db)


if __name__ == "__main__":
    main()
