"""The cooperative stop (flags only, never an exception raised into a thread): SIGTERM, Ctrl-C
and a time limit decide at epoch boundaries and abandon an epoch only past their deadline.
A clock of the test's own stands in for time, so no verdict depends on the machine's speed;
the worker's real path (lease, epoch writes, checkpoints, hand-back) on real PostgreSQL with
the training loop stood in (its epochs are what the clock counts)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

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
from gradlab.store.checkpoint_store import CheckpointStore
from gradlab.store.experiments import create_experiment
from gradlab.store.models import Run
from gradlab.store.object_store_filesystem import FilesystemObjectStore
from gradlab.store.session import session_scope
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.runner import execute_run
from gradlab.worker.stopping import HAND_BACK_MARGIN_SECONDS, StopControl, TimeLimit

FOREVER = 1e9


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stop(clock: Clock, limit: float = FOREVER, grace: float = 10.0) -> StopControl:
    return StopControl(grace, time_limit=TimeLimit(limit, clock=clock))


def test_sigterm_stops_at_the_next_boundary_and_abandons_only_when_that_is_too_late() -> None:
    clock = Clock()
    in_time = _stop(clock)
    assert not in_time.at_boundary(next_epoch_seconds=5)  # an epoch ending at t=5
    in_time.on_sigterm(signal.SIGTERM, None)
    deadline = 10 - HAND_BACK_MARGIN_SECONDS
    assert in_time.requested and not in_time.must_abandon(clock.now)  # 5 < 8: wait for it
    assert in_time.at_boundary(next_epoch_seconds=5)  # the boundary stops the run
    assert in_time.must_abandon(deadline)  # had it not come: abandoned at the deadline

    too_late = _stop(clock)
    assert not too_late.at_boundary(next_epoch_seconds=30)  # an epoch ending at t=30
    too_late.on_sigterm(signal.SIGTERM, None)
    assert too_late.must_abandon(clock.now)  # 30 > 8: waiting gains nothing
    assert not too_late.abandon.is_set()  # (the watcher thread sets it; not started here)


def test_the_first_ctrl_c_waits_for_the_boundary_the_second_stops_now() -> None:
    clock = Clock()
    stop = _stop(clock)
    previous = signal.getsignal(signal.SIGINT)
    try:
        stop.on_sigint(signal.SIGINT, None)
        assert stop.requested and stop.reason == "Ctrl-C"
        clock.now = 3600.0  # however long the epoch takes
        assert not stop.must_abandon(clock.now)
        stop.on_sigint(signal.SIGINT, None)
        assert stop.must_abandon(clock.now)
        # a third is Python's own KeyboardInterrupt, for a process stuck outside training
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_time_limit_stops_a_run_whose_next_epoch_would_end_after_it() -> None:
    clock = Clock()
    stop = _stop(clock, limit=100)
    clock.now = 60
    assert not stop.at_boundary(next_epoch_seconds=40)  # ends at 100: fits
    clock.now = 61
    assert stop.at_boundary(next_epoch_seconds=40)  # would end at 101
    assert not stop.requested  # only that run: others whose epochs fit may still train
    assert not stop.must_abandon(99.9) and stop.must_abandon(100)


def test_the_watcher_sets_abandon_at_the_deadline_and_says_so() -> None:
    clock = Clock()
    said: list[str] = []
    stop = StopControl(10, time_limit=TimeLimit(100, clock=clock), announce=said.append)
    stop.watch()
    try:
        clock.now = 100
        assert stop.abandon.wait(timeout=30)
    finally:
        stop.close()
    assert stop.requested and stop.reason == "time limit"
    assert said == ["time limit: stopping now; the epoch in progress is discarded"]


def _new_run(factory: sessionmaker[Session]) -> str:
    with session_scope(factory) as session:
        spec = ExperimentSpec.model_validate({"name": "timed", "seeds": [0],
                                              "hyperparameters": {"epochs": 6}})
        return create_experiment(session, spec).runs[0].id


def _clocked_loop(clock: Clock, epoch_seconds: float, calls: list[int]) -> Any:
    """A stand-in for ``fit_pack`` (one run) whose epochs each take ``epoch_seconds`` on
    ``clock``, obeying the epoch writer's decisions as the real loop does."""

    def fit_pack(pack: list[Any], _data: Any, **_: Any) -> list[TrainingResult]:
        (run,) = pack
        calls.append(1)
        values = {s: [1.0, 2.0] for s in GRADFLOW_STATS}
        for epoch in range(run.spec.hyperparameters.epochs):
            clock.now += epoch_seconds
            decision = run.on_epoch_end(EpochMetrics(epoch, 1, 0, 1, 0, 1e-3, epoch_seconds),
                                        GradFlowEpoch(epoch, ("a", "b"), values, values),
                                        lambda e=epoch: f"state {e}".encode())
            if decision is EpochDecision.STOP:
                return [TrainingResult(status=RunOutcome.STOPPED, layers=("a", "b"))]
        return [TrainingResult(status=RunOutcome.SUCCEEDED, layers=("a", "b"))]

    return fit_pack


def test_a_time_limit_hands_the_run_back_at_the_last_boundary_its_next_epoch_misses(
    postgres_session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    factory, clock = postgres_session_factory, Clock()
    run_id = _new_run(factory)
    store = CheckpointStore(FilesystemObjectStore(tmp_path))
    stop = _stop(clock, limit=35)  # epochs of 10 s: 0, 1 and 2 end by 30; 3 would end at 40
    ended = execute_run(run_id, factory, lambda _: None, "cpu", settings=WorkerSettings(),
                        checkpoints=store, training_loop=_clocked_loop(clock, 10, []),
                        stop=stop)
    assert ended == {run_id: AttemptOutcome.HANDED_BACK}
    with factory() as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert (run.status, run.epochs_done, run.attempt) == ("queued", 3, 0)
        saved = runs.latest_checkpoint(session, run_id)
    assert saved is not None and saved.epoch == 2 and store.load(saved) == b"state 2"
    assert stop.time_limit is not None and stop.time_limit.refused == {run_id: 10}
    assert stop.cut_short == []  # at a boundary: nothing discarded


def test_a_run_whose_recorded_epoch_cannot_fit_is_handed_back_without_training(
    postgres_session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    factory, clock = postgres_session_factory, Clock()
    run_id = _new_run(factory)
    store = CheckpointStore(FilesystemObjectStore(tmp_path))
    first = _stop(clock, limit=25)  # two epochs of 10 s, then the third would end at 30
    execute_run(run_id, factory, lambda _: None, "cpu", settings=WorkerSettings(),
                checkpoints=store, training_loop=_clocked_loop(clock, 10, []), stop=first)
    # Another invocation, with less time than the epoch this run recorded.
    calls: list[int] = []
    second = _stop(clock, limit=9)
    ended = execute_run(run_id, factory, lambda _: None, "cpu", settings=WorkerSettings(),
                        checkpoints=store, training_loop=_clocked_loop(clock, 10, calls),
                        stop=second)
    assert ended == {run_id: AttemptOutcome.HANDED_BACK}
    assert calls == []  # never started
    assert second.time_limit is not None and second.time_limit.refused == {run_id: 10}
    with factory() as session:
        run = session.get(Run, run_id)
        assert run is not None and (run.status, run.epochs_done) == ("queued", 2)
