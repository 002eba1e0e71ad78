"""``gradlab reaper`` as a real process: its timer is its own, so it requeues a lost run while
the broker is down (the beat-based reaper could not: its passes came through the broker), and
SIGTERM ends it between passes. Real PostgreSQL; the broker URL points at a closed port."""

from __future__ import annotations

import os
import signal
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from gradlab.science.spec import ExperimentSpec
from gradlab.store import runs
from gradlab.store.base import utcnow
from gradlab.store.experiments import create_experiment
from gradlab.store.models import Run
from gradlab.store.session import make_engine, make_session_factory, session_scope
from tests.support.processes import VENV_BIN, ServiceProcess, wait_for
from tests.worker.conftest import wait_ready

pytestmark = [pytest.mark.services]


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_reaper_requeues_a_lost_run_while_the_broker_is_down_and_stops_on_sigterm(
    own_postgres_url: str, tmp_path: Path,
) -> None:
    url = own_postgres_url
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        run_id = create_experiment(session, ExperimentSpec(name="lost", depth=8)).runs[0].id
        assert runs.claim_run(session, run_id, "gone", lease_seconds=8, max_attempts=3)
    with session_scope(factory) as session:  # its worker died a while ago
        session.get(Run, run_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    env = {**os.environ, "GRADLAB_DATABASE_URL": url, "GRADLAB_LEASE_SECONDS": "8",
           "GRADLAB_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0",
           "GRADLAB_LOG_FORMAT": "text"}
    reaper = ServiceProcess("reaper", [str(VENV_BIN / "gradlab"), "reaper"], env, tmp_path)
    try:
        wait_ready(reaper)

        def requeued() -> Run | None:
            with factory() as session:
                run = session.get(Run, run_id)
                return run if run is not None and run.status == "queued" else None

        run = wait_for("the lost run to be requeued", requeued, 60, service=reaper)
        assert (run.worker, run.attempt) == (None, 1)
        assert "not sent" in reaper.log_tail(20_000)  # the broker was down; the pass went on
        reaper.signal(signal.SIGTERM)
        assert reaper.proc.wait(15) == 0
        assert "reaper stopped" in reaper.log_tail(20_000)
    finally:
        reaper.stop()
        engine.dispose()
