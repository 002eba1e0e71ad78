"""The checkpoint cadence: at most every GRADLAB_CHECKPOINT_SECONDS on a GPU (every epoch on
the CPU), always at the last epoch, and whatever is unsaved at cancel, shutdown or the end
(real PostgreSQL, a real folder; the training loop stood in for where the cadence is what is
tested)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import (
    GRADFLOW_STATS,
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.store.checkpoint_store import CheckpointStore, run_prefix
from gradlab.store.experiments import create_experiment, request_cancel
from gradlab.store.models import Run
from gradlab.store.object_store_filesystem import FilesystemObjectStore
from gradlab.store.session import session_scope
from gradlab.worker.checkpointing import CheckpointCadence, RunCheckpoints, cadence_for
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.runner import execute_run
from gradlab.worker.stopping import StopControl


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cadence_waits_its_seconds_but_never_skips_the_last_epoch() -> None:
    clock = Clock()
    cadence = CheckpointCadence(60, clock=clock)
    clock.now += 59
    assert not cadence.due(last_epoch=False)
    assert cadence.due(last_epoch=True)
    clock.now += 1
    assert cadence.due(last_epoch=False)
    cadence.saved()
    assert not cadence.due(last_epoch=False)
    assert CheckpointCadence(0, clock=clock).due(last_epoch=False)  # 0: every epoch
    assert CheckpointCadence(60, every_epoch=True, clock=clock).due(last_epoch=False)


def test_the_cpu_checkpoints_every_epoch_a_gpu_at_its_cadence() -> None:
    settings = WorkerSettings(checkpoint_seconds=60)
    assert cadence_for("cpu", settings).due(last_epoch=False)
    assert not cadence_for("cuda:0", settings).due(last_epoch=False)


def test_runs_started_together_on_gpus_spread_their_first_checkpoints_over_the_interval() -> None:
    # A study sent to a fleet starts hundreds of runs in the same second; with one interval
    # each they would all write their checkpoints in the same second, every interval.
    settings = WorkerSettings(checkpoint_seconds=60)
    rng, clock = random.Random(0), Clock()
    start = clock.now
    cadences = [cadence_for("cuda:0", settings, rng=rng, clock=clock) for _ in range(200)]
    first: dict[int, int] = {}
    for second in range(61):
        clock.now = start + second
        for index, cadence in enumerate(cadences):
            if index not in first and cadence.due(last_epoch=False):
                first[index] = second
    seconds = list(first.values())
    assert len(seconds) == 200  # every run checkpoints within one interval
    assert min(seconds) >= 6  # none before a tenth of it
    assert max(seconds.count(s) for s in seconds) <= 20  # never the whole fleet at once


def test_a_gpu_runs_first_checkpoint_comes_within_its_interval_then_every_interval() -> None:
    clock = Clock()
    cadence = CheckpointCadence(60, clock=clock, first_after=15)
    clock.now += 14
    assert not cadence.due(last_epoch=False)
    clock.now += 1
    assert cadence.due(last_epoch=False)
    cadence.saved()
    clock.now += 59
    assert not cadence.due(last_epoch=False)
    clock.now += 1
    assert cadence.due(last_epoch=False)


def _record(factory: sessionmaker[Session], claimed: runs.ClaimedRun, epoch: int,
            ref: object) -> None:
    values = {s: [1.0, 2.0] for s in GRADFLOW_STATS}
    with session_scope(factory) as session:
        runs.record_epoch(session, claimed.run_id, EpochMetrics(epoch, 1, 0, 1, 0, 1e-3, 1),
                          GradFlowEpoch(epoch, ("a", "b"), values, values), ref,
                          owner=claimed.owner)


def test_unsaved_epochs_are_saved_on_demand_and_old_checkpoints_pruned(
    postgres_session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    factory = postgres_session_factory
    with session_scope(factory) as session:
        run_id = create_experiment(session, ExperimentSpec(name="cadence", seeds=[0])).runs[0].id
    with session_scope(factory) as session:
        claimed = runs.claim_run(session, run_id, "w", lease_seconds=60, max_attempts=3)
    store = CheckpointStore(FilesystemObjectStore(tmp_path))
    clock = Clock()
    checkpoints = RunCheckpoints(factory, store, claimed, CheckpointCadence(60, clock=clock),
                                 last_epoch=9)
    made: list[int] = []

    def epoch_end(epoch: int) -> object:
        ref = checkpoints.at_epoch_end(epoch, lambda: made.append(epoch) or f"{epoch}".encode())
        _record(factory, claimed, epoch, ref)
        if ref is not None:
            checkpoints.committed(ref)
        return ref

    assert epoch_end(0) is None  # a snapshot in memory, nothing written
    clock.now += 61
    first = epoch_end(1)
    assert first is not None and first.epoch == 1
    assert epoch_end(2) is None and epoch_end(3) is None
    assert made == [0, 1, 2, 3]  # a snapshot every epoch: the state at its end

    saved = checkpoints.save_pending("shutdown")  # SIGTERM: the last finished epoch
    assert saved is not None and saved.epoch == 3 and store.load(saved) == b"3"
    with factory() as session:
        assert runs.latest_checkpoint(session, run_id) == saved
    assert store.objects.keys(run_prefix(run_id)) == [saved.key]  # epoch 1's pruned
    assert checkpoints.save_pending("end") is None  # nothing unsaved any more


def _stand_in_loop(epochs: int, before_epoch: Any = None) -> Any:
    """A stand-in for the training loop (``fit_pack``'s signature, one run): ``epochs``
    epochs through the run's epoch writer, obeying its decisions and ``abandon`` as the real
    loop does. ``before_epoch(epoch)`` runs as each epoch starts (a signal, a cancel)."""

    def fit_pack(pack: list[Any], _data: Any, *, abandon: Any = None,
                 **_: Any) -> list[TrainingResult]:
        (run,) = pack
        values = {s: [1.0, 2.0] for s in GRADFLOW_STATS}
        for epoch in range(epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            if abandon is not None and abandon.is_set():  # mid-epoch: the epoch is discarded
                return [TrainingResult(status=RunOutcome.STOPPED, layers=("a", "b"))]
            decision = run.on_epoch_end(EpochMetrics(epoch, 1, 0, 1, 0, 1e-3, 1),
                                        GradFlowEpoch(epoch, ("a", "b"), values, values),
                                        lambda e=epoch: f"state {e}".encode())
            if decision is EpochDecision.CANCEL:
                return [TrainingResult(status=RunOutcome.CANCELLED, layers=("a", "b"))]
            if decision is EpochDecision.STOP:
                return [TrainingResult(status=RunOutcome.STOPPED, layers=("a", "b"))]
        return [TrainingResult(status=RunOutcome.SUCCEEDED, layers=("a", "b"))]

    return fit_pack


def _stop_in_epoch_2(how: str, stop: StopControl) -> Any:
    def before_epoch(epoch: int) -> None:
        if epoch != 2:
            return
        if how == "exit":  # told to exit outright (a cold shutdown)
            raise SystemExit(0)
        stop.request("SIGTERM", within=None if how == "at-the-boundary" else 0.0)
        if how == "mid-epoch":  # what the watcher does when the boundary comes too late
            stop.abandon.set()

    return before_epoch


@pytest.mark.parametrize("how", ["at-the-boundary", "mid-epoch", "exit"])
def test_a_stopped_run_saves_its_last_finished_epoch_and_goes_back_to_the_queue(
    how: str, postgres_session_factory: sessionmaker[Session], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = postgres_session_factory
    with session_scope(factory) as session:
        run_id = create_experiment(session, ExperimentSpec(name="stop", seeds=[0])).runs[0].id
    store = CheckpointStore(FilesystemObjectStore(tmp_path))
    stop = StopControl(grace_seconds=60)

    def train() -> dict[str, AttemptOutcome]:
        return execute_run(run_id, factory, lambda _: None, "cpu", settings=WorkerSettings(),
                           checkpoints=store, cadence=CheckpointCadence(3600),  # none due
                           training_loop=_stand_in_loop(5, _stop_in_epoch_2(how, stop)),
                           stop=stop)

    if how == "exit":
        with pytest.raises(SystemExit):
            train()
    else:
        assert train() == {run_id: AttemptOutcome.HANDED_BACK}
    with factory() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.attempt) == ("queued", 0)  # this attempt not counted
        saved = runs.latest_checkpoint(session, run_id)
    # At the boundary the epoch just written (2) is kept; mid-epoch, the last finished (1).
    kept = 2 if how == "at-the-boundary" else 1
    assert saved is not None and saved.epoch == kept
    assert store.load(saved) == f"state {kept}".encode()
    where = {"at-the-boundary": "at the end of an epoch", "mid-epoch": "mid-epoch",
             "exit": "on exit"}[how]
    assert f"handed back {where}" in caplog.text


def test_a_cancelled_run_keeps_the_checkpoint_of_its_last_epoch(
    postgres_session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    factory = postgres_session_factory
    with session_scope(factory) as session:
        experiment = create_experiment(session, ExperimentSpec(name="cancel", seeds=[0]))
        run_id, experiment_id = experiment.runs[0].id, experiment.id
    store = CheckpointStore(FilesystemObjectStore(tmp_path))

    def cancel_during_epoch_1(epoch: int) -> None:
        if epoch == 1:
            with session_scope(factory) as session:
                request_cancel(session, experiment_id)

    ended = execute_run(run_id, factory, lambda _: None, "cpu", settings=WorkerSettings(),
                        checkpoints=store, cadence=CheckpointCadence(3600),
                        training_loop=_stand_in_loop(5, cancel_during_epoch_1))
    assert ended == {run_id: AttemptOutcome.CANCELLED}
    with factory() as session:
        saved = runs.latest_checkpoint(session, run_id)
    assert saved is not None and saved.epoch == 1
