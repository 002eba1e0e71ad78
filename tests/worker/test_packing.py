"""Packing in the worker, on a real PostgreSQL database of the module's own and a small slice
of the real CIFAR-100: a claim takes up to GRADLAB_PACK_SIZE runs with the same fusion key at
the same epoch, each on its own lease; the pack is recorded on each run; a run whose lease is
lost leaves the pack and the others finish; pack size 1 trains alone; runs of another
precision never join, and each run records the precision it computed in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import load_cifar
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import WorkerSettings
from gradlab.store import runs
from gradlab.store.experiments import create_experiment
from gradlab.store.models import EpochMetricsRow, Run
from gradlab.store.session import make_engine, make_session_factory, session_scope
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.runner import execute_run

pytestmark = [pytest.mark.services, pytest.mark.slow]

SLICE = {"train_limit": 100, "val_limit": 50, "test_limit": 50}


def _spec(name: str, seeds: list[int], **hp: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "name": name, "depth": 8, "width": 8, "seeds": seeds, "data": SLICE,
        "hyperparameters": {"epochs": 2, "batch_size": 50, **hp},
    })


@pytest.fixture
def factory(own_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    """A database per test: no other test's queued runs can join a pack here."""
    engine = make_engine(own_postgres_url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _settings(data_dir: Path, pack_size: int) -> WorkerSettings:
    return WorkerSettings(device="cpu", data_dir=data_dir, pack_size=pack_size,
                          checkpoint_store="database")


def _data(data_dir: Path) -> Any:
    return lambda dataset: load_cifar(data_dir, dataset)


def _submit(factory: sessionmaker[Session], spec: ExperimentSpec) -> list[str]:
    with session_scope(factory) as session:
        return [r.id for r in create_experiment(session, spec).runs]


def _runs(factory: sessionmaker[Session], ids: list[str]) -> list[Run]:
    with factory() as session:
        found = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids)))}
        session.expunge_all()
    return [found[i] for i in ids]


def _epochs(factory: sessionmaker[Session], run_id: str) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(EpochMetricsRow.epoch)
                                    .where(EpochMetricsRow.run_id == run_id)
                                    .order_by(EpochMetricsRow.epoch)))


def test_a_claim_packs_runs_of_the_same_shape_at_the_same_epoch(
        factory: sessionmaker[Session], data_dir: Path) -> None:
    # Three seeds and a run with its own learning rate and decay: one fusion key, a pack of 4
    # in queue order (a fifth run of that key waits: the pack is full).
    seeds = _submit(factory, _spec("seeds", [0, 1, 2]))
    tuned = _submit(factory, _spec("tuned", [7], learning_rate=3e-3, weight_decay=1e-3))
    fifth = _submit(factory, _spec("fifth", [5]))
    wider = _submit(factory, _spec("batch", [0], batch_size=25))  # another step shape
    later = _submit(factory, _spec("later", [9]))  # same shape, but one epoch further on
    with session_scope(factory) as session:
        session.execute(update(Run).where(Run.id == later[0]).values(epochs_done=1))

    outcomes = execute_run(seeds[0], factory, _data(data_dir), "cpu",
                           settings=_settings(data_dir, 4))

    packed = seeds + tuned
    assert outcomes == dict.fromkeys(packed, AttemptOutcome.SUCCEEDED)
    trained = _runs(factory, packed)
    assert len({r.pack for r in trained}) == 1 and trained[0].pack is not None
    # each on its own lease: its own owner token and attempt, released at the end
    assert [(r.status, r.attempt, r.lease_expires_at) for r in trained] == [
        ("succeeded", 1, None)] * 4
    assert all(r.environment["pack"]["size"] == 4 for r in trained)
    assert all(_epochs(factory, r.id) == [0, 1] for r in trained)
    waiting = _runs(factory, [fifth[0], wider[0], later[0]])
    assert [(r.status, r.pack) for r in waiting] == [("queued", None)] * 3


def test_runs_that_differ_only_in_precision_never_pack_and_each_records_its_own(
        factory: sessionmaker[Session], data_dir: Path) -> None:
    bf16 = _submit(factory, _spec("bf16", [0, 1], precision="bf16"))
    fp32 = _submit(factory, _spec("fp32", [2], precision="fp32"))

    outcomes = execute_run(bf16[0], factory, _data(data_dir), "cpu",
                           settings=_settings(data_dir, 4))

    assert outcomes == dict.fromkeys(bf16, AttemptOutcome.SUCCEEDED)
    trained = _runs(factory, bf16)
    assert [(r.environment["precision"], r.precision) for r in trained] == [("bf16", "bf16")] * 2
    assert [(r.status, r.precision) for r in _runs(factory, fp32)] == [("queued", None)]
    execute_run(fp32[0], factory, _data(data_dir), "cpu", settings=_settings(data_dir, 4))
    assert [(r.status, r.precision) for r in _runs(factory, fp32)] == [("succeeded", "fp32")]


def test_pack_size_one_trains_alone(factory: sessionmaker[Session], data_dir: Path) -> None:
    ids = _submit(factory, _spec("alone", [0, 1]))
    outcomes = execute_run(ids[0], factory, _data(data_dir), "cpu",
                           settings=_settings(data_dir, 1))
    assert outcomes == {ids[0]: AttemptOutcome.SUCCEEDED}
    first, second = _runs(factory, ids)
    assert (first.status, first.pack) == ("succeeded", None)
    assert (second.status, second.pack) == ("queued", None)


def test_companions_already_leased_elsewhere_are_not_claimed(
        factory: sessionmaker[Session]) -> None:
    ids = _submit(factory, _spec("contended", [0, 1, 2]))
    with session_scope(factory) as session:
        other = runs.claim_run(session, ids[1], "other-worker", lease_seconds=60,
                               max_attempts=3)
        mine = runs.claim_run(session, ids[0], "me", lease_seconds=60, max_attempts=3)
    assert other is not None and mine is not None
    with session_scope(factory) as session:
        companions = runs.claim_companions(session, mine, "me", limit=3, lease_seconds=60,
                                           max_attempts=3)
    assert [c.run_id for c in companions] == [ids[2]]
    assert companions[0].owner == "me#1"
    assert [r.worker for r in _runs(factory, ids)] == ["me#1", "other-worker#1", "me#1"]


def test_a_run_whose_lease_is_lost_leaves_the_pack_and_the_others_finish(
        factory: sessionmaker[Session], data_dir: Path) -> None:
    ids = _submit(factory, _spec("stolen", [0, 1, 2]))
    load = _data(data_dir)
    calls = 0

    def data_then_steal(dataset: str) -> Any:
        # Called once per run while the pack is prepared: by then every run is claimed; the
        # second run's lease passes to another worker (as after a stall past its lease).
        nonlocal calls
        calls += 1
        if calls == 3:
            with session_scope(factory) as session:
                session.execute(update(Run).where(Run.id == ids[1])
                                .values(worker="thief#9", attempt=9))
        return load(dataset)

    outcomes = execute_run(ids[0], factory, data_then_steal, "cpu",
                           settings=_settings(data_dir, 4))
    assert outcomes == {ids[0]: AttemptOutcome.SUCCEEDED, ids[1]: AttemptOutcome.LOST,
                        ids[2]: AttemptOutcome.SUCCEEDED}
    first, stolen, third = _runs(factory, ids)
    assert first.status == third.status == "succeeded"
    assert (stolen.status, stolen.worker) == ("running", "thief#9")  # left to its new owner
    assert _epochs(factory, stolen.id) == []  # nothing written over the new owner's lease
    assert _epochs(factory, third.id) == [0, 1]


def test_unset_pack_size_packs_on_a_gpu_and_trains_alone_on_the_cpu() -> None:
    # On the CPU a pack of VGG38 runs measured slower than the same runs alone (README).
    import torch

    from gradlab.worker.runner import GPU_PACK_SIZE, pack_size_on

    unset = WorkerSettings()
    assert unset.pack_size is None
    assert pack_size_on("cpu", unset) == 1
    assert pack_size_on("cuda", unset) == pack_size_on("cuda:1", unset) == GPU_PACK_SIZE == 4
    assert pack_size_on("auto", unset) == (GPU_PACK_SIZE if torch.cuda.is_available() else 1)
    chosen = WorkerSettings(pack_size=3)
    assert pack_size_on("cpu", chosen) == pack_size_on("cuda:0", chosen) == 3
