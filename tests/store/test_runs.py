"""Worker-side repository on real PostgreSQL and SQLite: leases, epoch writes, outcomes."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science import records
from gradlab.science.records import GRADFLOW_STATS, EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from gradlab.store import runs
from gradlab.store.base import utcnow
from gradlab.store.checkpoint_store import CheckpointRef, checkpoint_key
from gradlab.store.experiments import create_experiment, request_cancel
from gradlab.store.float_arrays import unpack_floats
from gradlab.store.models import Checkpoint, EpochMetricsRow, Experiment, GradFlowEpochRow, Run
from gradlab.store.session import make_engine, make_session_factory, session_scope

LEASE = 60
LAYERS = tuple(f"layer{j}" for j in range(39))


@pytest.fixture
def factory(database_url: str) -> sessionmaker[Session]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _new_runs(factory: sessionmaker[Session], seeds: list[int]) -> tuple[str, list[str]]:
    with session_scope(factory) as session:
        experiment = create_experiment(
            session, ExperimentSpec(name="runs-test", depth=8, seeds=seeds)
        )
        return experiment.id, [r.id for r in experiment.runs]


def _epoch(epoch: int, scale: float = 1.0) -> tuple[EpochMetrics, GradFlowEpoch]:
    metrics = EpochMetrics(epoch, 4.0 * scale, 0.1, 4.1 * scale, 0.09, 1e-3, 2.5)
    per_stat = {s: [scale * (j + 1) * 1e-3 for j in range(len(LAYERS))] for s in GRADFLOW_STATS}
    return metrics, GradFlowEpoch(epoch, LAYERS, per_stat, dict(per_stat))


def _ref(run_id: str, epoch: int, data: bytes) -> CheckpointRef:
    """The reference a worker writes after saving ``data`` for ``epoch``."""
    return CheckpointRef("database", checkpoint_key(run_id, epoch, 1), epoch, len(data),
                         hashlib.sha256(data).hexdigest())


def _claim(factory: sessionmaker[Session], run_id: str, worker: str, **kw: object) -> object:
    kw.setdefault("lease_seconds", LEASE)
    kw.setdefault("max_attempts", 3)
    with session_scope(factory) as session:
        return runs.claim_run(session, run_id, worker, **kw)


def test_two_workers_claiming_at_once_exactly_one_wins(factory: sessionmaker[Session]) -> None:
    _, (run_id,) = _new_runs(factory, [0])
    start = threading.Barrier(6)
    results: list[object] = []
    errors: list[BaseException] = []

    def contender(name: str) -> None:
        try:
            start.wait()
            results.append(_claim(factory, run_id, name))
        except BaseException as exc:  # surfaced below: a crash must not pass as "lost"
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    with factory() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.attempt, run.worker) == ("running", 1, winners[0].owner)
        assert session.get(Experiment, run.experiment_id).status == "running"


def test_expired_lease_is_taken_over_and_the_old_owner_is_fenced_off(
    factory: sessionmaker[Session],
) -> None:
    _, (run_id,) = _new_runs(factory, [0])
    first = _claim(factory, run_id, "w1")
    assert _claim(factory, run_id, "w2") is None  # lease still live

    later = utcnow() + timedelta(seconds=LEASE + 1)
    with factory() as session:
        assert run_id in runs.find_lost_runs(session, now=later, limit=10_000)
    second = _claim(factory, run_id, "w2", now=later)
    assert second is not None and second.attempt == 2

    metrics, gradflow = _epoch(0)
    with session_scope(factory) as session:
        assert not runs.heartbeat(session, run_id, first.owner, lease_seconds=LEASE)
    with pytest.raises(runs.LeaseLostError), session_scope(factory) as session:
        runs.record_epoch(session, run_id, metrics, gradflow, _ref(run_id, 0, b"old"),
                          owner=first.owner)
    with session_scope(factory) as session:
        assert not runs.finish_run(session, run_id, "succeeded", owner=first.owner)
        assert runs.heartbeat(session, run_id, second.owner, lease_seconds=LEASE)
    with factory() as session:
        assert session.get(Run, run_id).status == "running"
        assert session.scalar(select(func.count()).where(EpochMetricsRow.run_id == run_id)) == 0


def test_attempts_are_capped_then_the_run_fails(factory: sessionmaker[Session]) -> None:
    experiment_id, (run_id,) = _new_runs(factory, [0])
    now = utcnow()
    for attempt in (1, 2):
        now += timedelta(seconds=LEASE + 1)
        claimed = _claim(factory, run_id, f"w{attempt}", max_attempts=2, now=now)
        assert claimed is not None and claimed.attempt == attempt
    now += timedelta(seconds=LEASE + 1)
    assert _claim(factory, run_id, "w3", max_attempts=2, now=now) is None
    with factory() as session:
        run = session.get(Run, run_id)
        assert run.status == "failed"
        assert "gave up after 2 attempts" in run.error
        assert session.get(Experiment, experiment_id).status == "failed"


def test_record_epoch_is_idempotent_and_never_duplicates(factory: sessionmaker[Session]) -> None:
    _, (run_id,) = _new_runs(factory, [0])
    claimed = _claim(factory, run_id, "w1")
    for scale, blob in ((1.0, b"first"), (2.0, b"second")):  # the same epoch delivered twice
        metrics, gradflow = _epoch(0, scale)
        with session_scope(factory) as session:
            runs.record_epoch(session, run_id, metrics, gradflow, _ref(run_id, 0, blob),
                              owner=claimed.owner, lease_seconds=LEASE)
    with factory() as session:
        metric_rows = session.scalars(
            select(EpochMetricsRow).where(EpochMetricsRow.run_id == run_id)
        )
        assert [(m.epoch, m.train_loss) for m in metric_rows] == [(0, 8.0)]
        flow = session.scalars(
            select(GradFlowEpochRow).where(GradFlowEpochRow.run_id == run_id)
        ).all()
        assert [row.epoch for row in flow] == [0]  # one row per epoch, replaced
        epoch_mean_l2 = unpack_floats(flow[0].epoch_mean_l2)
        assert len(epoch_mean_l2) == len(LAYERS)
        assert epoch_mean_l2[-1] == pytest.approx(2.0 * 39e-3)
        run = session.get(Run, run_id)
        assert (run.epochs_done, run.layers) == (1, list(LAYERS))
        assert runs.latest_checkpoint(session, run_id) == _ref(run_id, 0, b"second")


def test_an_older_epoch_never_replaces_a_newer_checkpoint(factory: sessionmaker[Session]) -> None:
    _, (run_id,) = _new_runs(factory, [0])
    claimed = _claim(factory, run_id, "w1")
    for epoch, blob in ((0, b"e0"), (1, b"e1"), (0, b"e0-again")):
        metrics, gradflow = _epoch(epoch)
        with session_scope(factory) as session:
            runs.record_epoch(session, run_id, metrics, gradflow, _ref(run_id, epoch, blob),
                              owner=claimed.owner)
    with factory() as session:
        assert runs.latest_checkpoint(session, run_id) == _ref(run_id, 1, b"e1")
        assert session.get(Run, run_id).epochs_done == 2
        assert session.get(Checkpoint, run_id).size_bytes == 2


def test_a_late_checkpoint_is_referenced_only_for_a_recorded_epoch_of_its_owner(
    factory: sessionmaker[Session],
) -> None:
    _, (run_id,) = _new_runs(factory, [0])
    claimed = _claim(factory, run_id, "w1")
    metrics, gradflow = _epoch(0)
    with session_scope(factory) as session:
        runs.record_epoch(session, run_id, metrics, gradflow, None, owner=claimed.owner)
    for ref, owner in ((_ref(run_id, 1, b"unrecorded epoch"), claimed.owner),
                       (_ref(run_id, 0, b"not the owner"), "w2#2")):
        with pytest.raises(runs.LeaseLostError), session_scope(factory) as session:
            runs.record_checkpoint(session, run_id, ref, owner=owner)
    with session_scope(factory) as session:
        runs.record_checkpoint(session, run_id, _ref(run_id, 0, b"late"), owner=claimed.owner)
    with factory() as session:
        assert runs.latest_checkpoint(session, run_id) == _ref(run_id, 0, b"late")


def test_record_epoch_rejects_gradflow_with_the_wrong_layer_count(
    factory: sessionmaker[Session],
) -> None:
    _, (run_id,) = _new_runs(factory, [0])
    claimed = _claim(factory, run_id, "w1")
    metrics, gradflow = _epoch(0)
    short = {s: v[:-1] for s, v in gradflow.last_batch.items()}
    bad = GradFlowEpoch(0, LAYERS, short, gradflow.epoch_mean)
    expected = r"last_batch\.mean_abs of epoch 0 .* \(39\); got 38"
    with pytest.raises(ValueError, match=expected), session_scope(factory) as session:
        runs.record_epoch(session, run_id, metrics, bad, None, owner=claimed.owner)


def test_finish_rolls_up_to_the_experiment_and_cancel_is_seen(
    factory: sessionmaker[Session],
) -> None:
    experiment_id, (run_a, run_b) = _new_runs(factory, [0, 1])
    claim_a = _claim(factory, run_a, "w1")
    claim_b = _claim(factory, run_b, "w2")
    with session_scope(factory) as session:
        assert runs.finish_run(
            session,
            run_a,
            "succeeded",
            owner=claim_a.owner,
            test=records.TestResult(loss=3.0, acc=0.3, best_epoch=0),
            environment={"device": "cpu"},
        )
    with factory() as session:
        assert session.get(Experiment, experiment_id).status == "running"
        assert not runs.cancel_requested(session, run_b)
    with session_scope(factory) as session:
        request_cancel(session, experiment_id)
    with session_scope(factory) as session:
        assert runs.cancel_requested(session, run_b)
        assert runs.finish_run(session, run_b, "cancelled", owner=claim_b.owner)
    with factory() as session:
        run = session.get(Run, run_a)
        assert (run.status, run.test_acc, run.best_epoch, run.lease_expires_at) == (
            "succeeded",
            0.3,
            0,
            None,
        )
        assert session.get(Experiment, experiment_id).status == "cancelled"
        # a finished run is not claimable again
    assert _claim(factory, run_a, "w3", now=utcnow() + timedelta(days=1)) is None
