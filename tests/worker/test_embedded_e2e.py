"""Embedded mode end to end: ``gradlab serve`` as a real process (API + local worker, SQLite,
no broker) over real HTTP; queued and interrupted runs survive restarts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import TrainingResult
from gradlab.store import runs
from gradlab.store.models import EpochMetricsRow, Run
from gradlab.store.session import make_engine, make_session_factory
from tests.support.processes import (
    VENV_BIN,
    ServiceProcess,
    free_port,
    wait_for,
    wait_http_ok,
)
from tests.worker.reference_run import EPOCHS, assert_matches_reference, spec_named

pytestmark = [pytest.mark.slow]

SLICE = {"train_limit": 400, "val_limit": 100, "test_limit": 100}


class Serve:
    """Starts and stops ``gradlab serve`` on one SQLite file."""

    def __init__(self, db: Path, data_dir: Path, logs: Path):
        self.db, self.logs = db, logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
        self.env.update(GRADLAB_DATA_DIR=str(data_dir), GRADLAB_DEVICE="cpu",
                        PYTHONUNBUFFERED="1",
                        # An hour: a run resumed within the test was found as an orphan of a
                        # dead process, not by its lease expiring.
                        GRADLAB_LEASE_SECONDS="3600",
                        # a graceful stop hands the run back well within ServiceProcess.stop's wait
                        GRADLAB_SHUTDOWN_GRACE_SECONDS="10",
                        # Runs alone: the restart test compares seed 0 bit for bit with the
                        # unfused reference run, and a fused pack equals it only up to float
                        # reassociation (packs: tests/core/test_pack.py, worker/test_packing.py).
                        GRADLAB_PACK_SIZE="1")
        self.process: ServiceProcess | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> ServiceProcess:
        port = free_port()
        self.starts += 1
        self.process = ServiceProcess(
            f"serve-{self.starts}",
            [str(VENV_BIN / "gradlab"), "serve", "--port", str(port), "--db", str(self.db)],
            self.env, self.logs,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{self.url}/healthz", timeout=90, service=self.process)
        return self.process

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture
def serve(tmp_path: Path, data_dir: Path) -> Iterator[Serve]:
    server = Serve(tmp_path / "gradlab.db", data_dir, tmp_path)
    yield server
    if server.process is not None:
        server.process.stop()


@pytest.fixture
def sqlite_store(serve: Serve) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{serve.db}")
    yield make_session_factory(engine)
    engine.dispose()


def _spec(name: str, epochs: int, seeds: list[int]) -> dict[str, Any]:
    return {"name": name, "depth": 8, "hyperparameters": {"epochs": epochs},
            "data": dict(SLICE), "seeds": seeds}


def _experiment(serve: Serve, experiment_id: str) -> dict[str, Any]:
    with serve.client() as http:
        return http.get(f"/experiments/{experiment_id}").json()


def test_serve_trains_a_posted_experiment_and_serves_its_results(serve: Serve) -> None:
    process = serve.start()
    assert "auth: off (single-user mode)" in process.log_tail()  # says so when it starts
    with serve.client() as http:
        created = http.post("/experiments", json=_spec("embedded", 2, [0, 1]))
        assert created.status_code == 201, created.text
        experiment_id = created.json()["id"]

        done = wait_for(
            "the experiment to finish",
            lambda: (body := http.get(f"/experiments/{experiment_id}").json())["status"]
            in {"succeeded", "failed"} and body,
            180, service=process,
        )
        assert done["status"] == "succeeded", done
        assert [(r["seed"], r["epochs_done"]) for r in done["runs"]] == [(0, 2), (1, 2)]

        metrics = http.get(f"/experiments/{experiment_id}/metrics").json()
        assert [run["epochs"] for run in metrics["runs"]] == [[0, 1], [0, 1]]
        flow = http.get(f"/experiments/{experiment_id}/gradflow").json()
        assert flow["layers"][0] == "entry.conv" and flow["layers"][-1] == "head.linear"
        for run in flow["runs"]:
            assert run["epochs"] == [0, 1]
            assert all(len(row) == len(flow["layers"]) for row in run["values"])
            assert all(value > 0 for row in run["values"] for value in row)


def test_queued_and_interrupted_runs_survive_restarts_and_resume(
    serve: Serve, sqlite_store: sessionmaker[Session], reference: TrainingResult
) -> None:
    """Stopped gracefully, then killed outright, then started again: both runs finish, seed 0
    identical to an uninterrupted run (metrics and gradient flow, bit for bit)."""
    epochs = EPOCHS
    process = serve.start()
    with serve.client() as http:
        created = http.post("/experiments", json=spec_named("embedded-restart", seeds=[0, 1]))
        assert created.status_code == 201, created.text
    experiment_id = created.json()["id"]
    first_run, second_run = (r["id"] for r in created.json()["runs"])

    def epochs_done(run_id: str) -> int:
        with sqlite_store() as session:
            return session.get(Run, run_id).epochs_done

    def running_with_an_epoch() -> str | None:
        with sqlite_store() as session:
            for run_id in (first_run, second_run):
                run = session.get(Run, run_id)
                if run.status == "running" and run.epochs_done >= 1:
                    return run_id
        return None

    # 1. A graceful stop mid-run hands the run back: nothing is left "running".
    interrupted = wait_for("a run with an epoch", running_with_an_epoch, 300, service=process)
    process.stop(timeout=60)
    with sqlite_store() as session:
        assert session.get(Run, interrupted).status == "queued"
        assert session.get(Run, interrupted).attempt == 0  # a shutdown is not a failed attempt
        interrupted_at = runs.latest_checkpoint(session, interrupted).epoch

    # 2. Restart: training resumes; then a hard kill (no chance to clean up) mid-run.
    process = serve.start()
    wait_for("more epochs after the restart",
             lambda: epochs_done(interrupted) > interrupted_at + 1, 300, service=process)
    process.signal(signal.SIGKILL)
    process.proc.wait(10)

    # 3. Restart again: the orphaned run is taken back at once (not after its lease) and
    # both runs finish, every epoch written exactly once.
    process = serve.start()
    done = wait_for(
        "the experiment to finish after restarts",
        lambda: (body := _experiment(serve, experiment_id))["status"]
        in {"succeeded", "failed"} and body,
        600, service=process,
    )
    assert done["status"] == "succeeded", done
    with sqlite_store() as session:
        assert session.get(Run, interrupted).environment["resumed_from_epoch"] is not None
        for run_id in (first_run, second_run):
            written = session.scalars(
                select(EpochMetricsRow.epoch).where(EpochMetricsRow.run_id == run_id)
                .order_by(EpochMetricsRow.epoch)
            ).all()
            assert written == list(range(epochs))
    assert_matches_reference(sqlite_store, first_run, reference)
