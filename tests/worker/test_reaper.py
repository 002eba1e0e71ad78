"""Lost runs are found by their lease and sent again; execute_run's refusals and failures.

No training here: these paths end before the model is built. Real databases (both backends).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import DataNotFoundError
from gradlab.dispatch.dispatchers import DispatchError
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import WorkerSettings
from gradlab.store import migrate, runs
from gradlab.store.base import utcnow
from gradlab.store.experiments import create_experiment, request_cancel
from gradlab.store.models import Experiment, Run
from gradlab.store.session import make_engine, make_session_factory, session_scope
from gradlab.worker.embedded import requeue_orphans
from gradlab.worker.outcomes import AttemptOutcome
from gradlab.worker.reaper import reap
from gradlab.worker.runner import execute_run

LEASE = 30


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def dispatch(self, run_ids: Sequence[str]) -> None:
        self.sent.extend(run_ids)


@pytest.fixture(scope="module")
def reaper_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('reaper') / 'gradlab.db'}"
    migrate.upgrade(url, "head")
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Databases of this module's own: what the reaper finds (and how many queued runs it
    counts) must not depend on what other tests left in the session databases."""
    own = {"postgres": "module_postgres_url", "sqlite": "reaper_sqlite_url"}
    return str(request.getfixturevalue(own[request.param]))


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _settings(database_url: str) -> WorkerSettings:
    return WorkerSettings(database_url=database_url, lease_seconds=LEASE, max_attempts=3)


def _new_run(factory: sessionmaker[Session]) -> tuple[str, str]:
    with session_scope(factory) as session:
        experiment = create_experiment(session, ExperimentSpec(name="reap", depth=8, seeds=[0]))
        return experiment.id, experiment.runs[0].id


def _claim(factory: sessionmaker[Session], run_id: str, worker: str) -> runs.ClaimedRun:
    with session_scope(factory) as session:
        claimed = runs.claim_run(session, run_id, worker, lease_seconds=LEASE, max_attempts=3)
    assert claimed is not None
    return claimed


def test_a_run_whose_lease_expired_is_requeued_and_sent_again(
    factory: sessionmaker[Session], database_url: str
) -> None:
    experiment_id, lost = _new_run(factory)
    _, alive = _new_run(factory)
    _claim(factory, lost, "gone")
    _claim(factory, alive, "busy")
    with session_scope(factory) as session:  # "gone" stopped heartbeating long ago
        session.get(Run, lost).lease_expires_at = utcnow() - timedelta(seconds=1)

    dispatcher = RecordingDispatcher()
    sent = reap(factory, dispatcher, _settings(database_url), resend_queued=False)
    assert lost in sent and alive not in sent
    assert lost in dispatcher.sent
    with factory() as session:
        run = session.get(Run, lost)
        assert (run.status, run.worker, run.attempt) == ("queued", None, 1)
        assert session.get(Run, alive).status == "running"
        assert session.get(Experiment, experiment_id).status == "queued"
    # The next claim is attempt 2 (the cap counts it).
    assert _claim(factory, lost, "next").attempt == 2


def test_long_queued_runs_are_resent_at_most_once_per_lease(
    factory: sessionmaker[Session], database_url: str
) -> None:
    _, run_id = _new_run(factory)
    settings = _settings(database_url)
    later = utcnow() + timedelta(seconds=LEASE + 1)
    first = RecordingDispatcher()
    reap(factory, first, settings, now=later)
    again = RecordingDispatcher()
    reap(factory, again, settings, now=later + timedelta(seconds=1))
    assert run_id in first.sent
    assert run_id not in again.sent


class RefusingDispatcher:
    """A broker that takes nothing (down, or restarting)."""

    def dispatch(self, run_ids: Sequence[str]) -> None:
        raise DispatchError(run_ids, ConnectionError("connection reset by peer"))


def test_a_resend_the_broker_refused_is_not_marked_sent_and_goes_at_the_next_pass(
    factory: sessionmaker[Session], database_url: str
) -> None:
    _, run_id = _new_run(factory)
    with factory() as session:
        submitted_at = session.get(Run, run_id).queued_at
    settings = _settings(database_url)
    later = utcnow() + timedelta(seconds=LEASE + 1)
    assert run_id in reap(factory, RefusingDispatcher(), settings, now=later)
    with factory() as session:  # no message exists: it must not look resent
        assert session.get(Run, run_id).queued_at == submitted_at
    again = RecordingDispatcher()
    reap(factory, again, settings, now=later + timedelta(seconds=1))
    assert run_id in again.sent  # not a lease later


def test_a_resent_run_looks_resent_only_once_its_message_is_sent(
    factory: sessionmaker[Session], database_url: str
) -> None:
    """Whoever reads the run while the reaper publishes (a test waiting for the resend, another
    reaper) must not see it marked as resent before its message exists."""
    _, run_id = _new_run(factory)
    with factory() as session:
        submitted_at = session.get(Run, run_id).queued_at
    seen_while_sending: list[object] = []

    class ObservingDispatcher:
        def dispatch(self, run_ids: Sequence[str]) -> None:
            with factory() as session:
                seen_while_sending.append(session.get(Run, run_id).queued_at)

    later = utcnow() + timedelta(seconds=LEASE + 1)
    reap(factory, ObservingDispatcher(), _settings(database_url), now=later)
    assert seen_while_sending == [submitted_at]
    with factory() as session:  # and once sent, it is marked
        assert session.get(Run, run_id).queued_at != submitted_at


def test_orphans_of_a_dead_local_process_are_requeued_at_once(
    factory: sessionmaker[Session],
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    owners = {
        "dead": f"{host}:{dead_pid}",
        "alive": f"{host}:{os.getpid()}",
        "elsewhere": f"another-host:{dead_pid}",
    }
    ids = {}
    for label, worker in owners.items():
        _, ids[label] = _new_run(factory)
        _claim(factory, ids[label], worker)
    with session_scope(factory) as session:
        requeued = requeue_orphans(session)
    assert ids["dead"] in requeued
    assert ids["alive"] not in requeued and ids["elsewhere"] not in requeued
    # A study folder copied here from a machine stopped outright: its leases are of that
    # machine, and no process there will come back for them.
    with session_scope(factory) as session:
        requeued = requeue_orphans(session, other_hosts=True)
    assert requeued == [ids["elsewhere"]]


def test_an_infrastructure_failure_is_retried_up_to_the_attempt_limit(
    factory: sessionmaker[Session], database_url: str
) -> None:
    """Data missing on this worker is the worker's problem, not the run's: the run is queued
    again (the attempt counts) until the limit, then fails naming the cause."""
    settings = _settings(database_url)
    _, run_id = _new_run(factory)

    def no_data(dataset: str) -> None:
        raise DataNotFoundError(f"data folder /nowhere does not exist ({dataset})")

    for attempt in (1, 2):
        ended = execute_run(run_id, factory, no_data, "cpu", settings=settings)
        assert ended == {run_id: AttemptOutcome.HANDED_BACK}
        with factory() as session:
            run = session.get(Run, run_id)
            assert (run.status, run.attempt) == ("queued", attempt)
            assert f"attempt {attempt} failed" in run.error and "DataNotFoundError" in run.error
    ended = execute_run(run_id, factory, no_data, "cpu", settings=settings)
    assert ended == {run_id: AttemptOutcome.FAILED}
    with factory() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.attempt) == ("failed", 3)
        assert run.error.startswith("gave up after 3 attempts")
        assert "DataNotFoundError: data folder /nowhere does not exist" in run.error
    # Finished: a redelivered message for it is refused without touching it.
    ended = execute_run(run_id, factory, no_data, "cpu", settings=settings)
    assert ended == {run_id: AttemptOutcome.LOST}
    missing = execute_run("no-such-run", factory, no_data, "cpu", settings=settings)
    assert missing == {"no-such-run": AttemptOutcome.LOST}


def test_a_failure_of_the_run_itself_is_final_at_the_first_attempt(
    factory: sessionmaker[Session], database_url: str
) -> None:
    """Training raises for the run's own reason (here: its spec wants CIFAR-100, the data is
    CIFAR-10): retrying would fail the same way, so it fails at once."""
    import numpy as np

    from gradlab.core.data import CifarArrays

    settings = _settings(database_url)
    _, run_id = _new_run(factory)
    images = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros(4, dtype=np.int64)
    cifar10 = CifarArrays("cifar10", images, labels, images, labels, source="made here")
    ended = execute_run(run_id, factory, lambda _: cifar10, "cpu", settings=settings)
    assert ended == {run_id: AttemptOutcome.FAILED}
    with factory() as session:
        run = session.get(Run, run_id)
        assert (run.status, run.attempt) == ("failed", 1)
        assert "spec wants cifar100 but the data is cifar10" in run.error


def test_execute_run_ends_a_run_cancelled_before_it_started_without_training(
    factory: sessionmaker[Session], database_url: str
) -> None:
    experiment_id, run_id = _new_run(factory)
    _claim(factory, run_id, "elsewhere")  # running, so cancel leaves it to its worker
    with session_scope(factory) as session:
        request_cancel(session, experiment_id)
        run = session.get(Run, run_id)
        run.lease_expires_at = utcnow() - timedelta(seconds=1)  # and that worker died

    def must_not_load(_dataset: str) -> None:
        raise AssertionError("a cancelled run must not load data")

    settings = _settings(database_url)
    ended = execute_run(run_id, factory, must_not_load, "cpu", settings=settings)
    assert ended == {run_id: AttemptOutcome.CANCELLED}
    with factory() as session:
        assert session.get(Experiment, experiment_id).status == "cancelled"


def test_an_epoch_write_whose_connection_drops_is_retried_then_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    from gradlab.worker import attempt

    monkeypatch.setattr(attempt, "WRITE_RETRY_PAUSES", (0.0, 0.0))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT ...", {}, ConnectionError("server closed"))
        return "written"

    assert attempt.retrying(flaky, "epoch 0") == "written"
    assert len(calls) == 3

    def down() -> str:
        raise OperationalError("INSERT ...", {}, ConnectionError("connection refused"))

    with pytest.raises(OperationalError):
        attempt.retrying(down, "epoch 0")


class DispatcherWithBacklog(RecordingDispatcher):
    def __init__(self, backlog: int | None) -> None:
        super().__init__()
        self._backlog = backlog

    def backlog(self) -> int | None:
        return self._backlog


def test_as_many_queued_runs_are_resent_as_the_broker_queue_is_missing(
    factory: sessionmaker[Session], database_url: str
) -> None:
    """A queue that still holds messages (a busy cluster) does not starve the resend: when it
    holds fewer than the queued runs, that many of the runs sent longest ago go again."""
    # Three runs of its own: the check below needs at least two queued runs, whatever other
    # tests left in the session's database (a worker that packs trains leftovers it can fuse).
    for _ in range(3):
        _new_run(factory)
    later = utcnow() + timedelta(seconds=LEASE + 1)
    # first a pass that requeues (and sends) the runs other tests left running, resending none
    reap(factory, DispatcherWithBacklog(backlog=10**6), _settings(database_url), now=later)
    with factory() as session:
        queued = runs.count_queued(session)
    complete = DispatcherWithBacklog(backlog=queued)  # one message per queued run: all waiting
    reap(factory, complete, _settings(database_url), now=later)
    assert complete.sent == []
    short = DispatcherWithBacklog(backlog=queued - 2)  # two messages lost, queue not empty
    reap(factory, short, _settings(database_url), now=later)
    assert len(short.sent) == 2
    # each is sent at most once per lease
    again = DispatcherWithBacklog(backlog=queued - 2)
    reap(factory, again, _settings(database_url), now=later + timedelta(seconds=1))
    assert not set(again.sent) & set(short.sent)


def test_a_message_of_a_run_no_longer_queued_does_not_hide_a_lost_one(
    factory: sessionmaker[Session], database_url: str
) -> None:
    """Real Redis: the reaper reads which runs have a message (waiting or held by a worker)
    and resends exactly the queued ones without; counting messages would not, here."""
    import json
    import uuid

    import redis

    from gradlab.dispatch.dispatchers import REDIS_UNACKED_KEY, CeleryDispatcher
    from gradlab.dispatch.queues import producer_app
    from tests.worker.conftest import REDIS_URL, delete_queue_keys

    queue = f"gradlab-peek-{uuid.uuid4().hex[:8]}"
    dispatcher = CeleryDispatcher(producer_app(WorkerSettings(broker_url=REDIS_URL,
                                                              celery_queue=queue)))
    client = redis.Redis.from_url(REDIS_URL)
    held_tag = f"{queue}-held"
    try:
        _, waiting = _new_run(factory)
        _, lost = _new_run(factory)
        _, held = _new_run(factory)
        _, running = _new_run(factory)
        _claim(factory, running, "busy")
        with session_scope(factory) as session:  # still heartbeating when the pass comes
            session.get(Run, running).lease_expires_at = utcnow() + timedelta(hours=1)
        # the queue holds a message for `waiting` and one for `running` (restored, say, when
        # its worker reconnected); `held`'s message is with a worker; `lost`'s is gone
        dispatcher.dispatch([waiting, running, held])
        raw = client.rpop(queue)  # kombu pushes left, pops right: `waiting` went first
        assert raw is not None and waiting.encode() in raw
        client.lpush(queue, raw)
        held_message = next(m for m in client.lrange(queue, 0, -1) if held.encode() in m)
        client.lrem(queue, 1, held_message)
        client.hset(REDIS_UNACKED_KEY, held_tag,
                    json.dumps([json.loads(held_message), queue, queue]))
        assert dispatcher.waiting_run_ids() == {waiting, running, held}

        later = utcnow() + timedelta(seconds=LEASE + 1)
        recorder = PeekingDispatcher(dispatcher)
        reap(factory, recorder, _settings(database_url), now=later)
        assert lost in recorder.sent
        assert not {waiting, held, running} & set(recorder.sent)
    finally:
        client.hdel(REDIS_UNACKED_KEY, held_tag)
        dispatcher.close()
        delete_queue_keys(queue)


class PeekingDispatcher(RecordingDispatcher):
    """Records what it is asked to send; reads the real broker's messages."""

    def __init__(self, real: object) -> None:
        super().__init__()
        self.waiting_run_ids = real.waiting_run_ids  # type: ignore[attr-defined]
