"""A run killed in the middle of writing a checkpoint resumes from the last committed one and
replays the epochs since bit-identically on the CPU, on each checkpoint store: the database,
a folder, and S3 spoken by moto's standalone server (named so in the test ids). Real
PostgreSQL, real worker processes, the real CIFAR-100 (a small slice)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import load_cifar
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.store.base import utcnow
from gradlab.store.checkpoint_store import CheckpointStore, open_checkpoint_store, run_prefix
from gradlab.store.experiments import create_experiment
from gradlab.store.models import EpochMetricsRow, GradFlowEpochRow, Run
from gradlab.store.session import session_scope
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.runner import execute_run
from tests.support.processes import REPO
from tests.support.s3_server import FAKE_AWS_ENV

pytestmark = [pytest.mark.services, pytest.mark.slow]

EPOCHS = 4
KILLED_WRITING = 2  # the epoch whose checkpoint bytes are being written when the worker dies
SPEC = ExperimentSpec(
    name="resume", depth=8, seeds=[0], hyperparameters={"epochs": EPOCHS},
    data={"train_limit": 200, "val_limit": 100, "test_limit": 100},
)


@pytest.fixture
def settings(place: str, request: pytest.FixtureRequest, postgres_url: str, data_dir: Path,
             tmp_path: Path) -> WorkerSettings:
    where = {"database": "database", "filesystem": str(tmp_path / "checkpoints")}.get(place)
    endpoint = None
    if where is None:
        endpoint = request.getfixturevalue("moto_s3_endpoint")
        where = f"s3://{request.getfixturevalue('s3_bucket')}/ckpt"
    return WorkerSettings(database_url=postgres_url, checkpoint_store=where,
                          s3_endpoint_url=endpoint, data_dir=data_dir,
                          device="cpu")  # on the CPU: a checkpoint every epoch


def _data(settings: WorkerSettings) -> Any:
    return lambda dataset: load_cifar(settings.data_dir, dataset)


def _new_run(factory: sessionmaker[Session]) -> str:
    with session_scope(factory) as session:
        return create_experiment(session, SPEC).runs[0].id


def _rows(factory: sessionmaker[Session], run_id: str) -> tuple[list[Any], list[Any]]:
    """Every number the run wrote, per epoch (wall times aside: how long, and when)."""
    metric_columns = [c for c in EpochMetricsRow.__table__.c
                      if c.name not in ("run_id", "seconds", "recorded_at")]
    flow_columns = [c for c in GradFlowEpochRow.__table__.c if c.name != "run_id"]
    with factory() as session:
        metrics = session.execute(select(*metric_columns).where(EpochMetricsRow.run_id == run_id)
                                  .order_by(EpochMetricsRow.epoch)).all()
        flow = session.execute(select(*flow_columns).where(GradFlowEpochRow.run_id == run_id)
                               .order_by(GradFlowEpochRow.epoch)).all()
    return [tuple(r) for r in metrics], [tuple(r) for r in flow]


@pytest.fixture(scope="module")
def uninterrupted(postgres_session_factory: sessionmaker[Session],
                  data_dir: Path) -> tuple[list[Any], list[Any]]:
    """The rows of the same run trained without interruption."""
    settings = WorkerSettings(device="cpu", data_dir=data_dir)
    run_id = _new_run(postgres_session_factory)
    ended = execute_run(run_id, postgres_session_factory, _data(settings), "cpu",
                        settings=settings)
    assert ended == {run_id: AttemptOutcome.SUCCEEDED}
    return _rows(postgres_session_factory, run_id)


def _kill_while_writing(settings: WorkerSettings, run_id: str, tmp_path: Path) -> None:
    env = {**os.environ, **FAKE_AWS_ENV, "PYTHONUNBUFFERED": "1"}
    env.update({f"GRADLAB_{k.upper()}": str(v) for k, v in settings.model_dump().items()
                if v is not None and k in ("database_url", "checkpoint_store", "s3_endpoint_url",
                                           "data_dir", "device")})
    log = tmp_path / "killed-worker.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tests.support.kill_mid_write", run_id, str(KILLED_WRITING)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, log.read_text()[-4000:]


@pytest.fixture
def store(settings: WorkerSettings, postgres_session_factory: sessionmaker[Session]
          ) -> Iterator[CheckpointStore]:
    yield open_checkpoint_store(settings, postgres_session_factory)


# The digest check is the same code on every store: the tampered case runs on one.
@pytest.mark.parametrize(
    ("place", "tamper"),
    [("database", False), ("filesystem", False), ("s3-on-moto-server", False),
     ("filesystem", True)],
    ids=["database", "filesystem", "s3-on-moto-server", "filesystem-tampered"],
)
def test_a_run_killed_mid_write_resumes_from_its_last_checkpoint_and_replays_identically(
    tamper: bool, settings: WorkerSettings, store: CheckpointStore,
    postgres_session_factory: sessionmaker[Session],
    uninterrupted: tuple[list[Any], list[Any]], tmp_path: Path,
) -> None:
    factory = postgres_session_factory
    run_id = _new_run(factory)
    _kill_while_writing(settings, run_id, tmp_path)

    # The half-written checkpoint is nowhere; the reference is the previous epoch's.
    with factory() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.epochs_done, run.attempt) == ("running", KILLED_WRITING, 1)
        committed = runs.latest_checkpoint(session, run_id)
    assert committed is not None and committed.epoch == KILLED_WRITING - 1
    assert store.objects.keys(run_prefix(run_id)) == [committed.key]
    store.load(committed)
    if tamper:
        flipped = bytearray(store.objects.get(committed.key))
        flipped[len(flipped) // 2] ^= 0xFF
        store.objects.put(committed.key, bytes(flipped))

    # The reaper's move once the lease has expired; then another worker takes the run.
    with session_scope(factory) as session:
        assert runs.requeue_running(session, run_id,
                                    lease_expired_before=utcnow() + timedelta(days=1))
    ended = execute_run(run_id, factory, _data(settings), "cpu", settings=settings,
                        checkpoints=store)
    assert ended == {run_id: AttemptOutcome.SUCCEEDED}

    with factory() as session:
        run = session.get(Run, run_id)
        final = runs.latest_checkpoint(session, run_id)
    assert run.attempt == 2
    if tamper:
        assert run.environment["resumed_from_epoch"] is None
        assert "SHA-256" in run.environment["checkpoint_rejected"]
    else:
        assert run.environment["resumed_from_epoch"] == KILLED_WRITING - 1
    assert _rows(factory, run_id) == uninterrupted  # every number, bit for bit
    # Older checkpoints were deleted once newer ones were committed.
    assert final.epoch == EPOCHS - 1
    assert store.objects.keys(run_prefix(run_id)) == [final.key]
    assert store.load(final)
