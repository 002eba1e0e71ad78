"""Server-sent events over real HTTP: an event per epoch and per status change, heartbeats,
resuming with Last-Event-ID on another API process, one database poll per process whatever
the number of streams, and clear 4xx answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from gradlab.client import GradlabClient, NotFoundError, ValidationError
from gradlab.client.models import Event
from gradlab.client.sse import parse_events
from tests.service.conftest import StoreWorker, epoch_numbers
from tests.support.processes import start_api, wait_for
from tests.support.prometheus import value


def _next(events: Iterator[Event], kind: str | None = None, limit: int = 50) -> Event:
    for _ in range(limit):
        event = next(events)
        if kind is None or event.event == kind:
            return event
    raise AssertionError(f"no {kind} event among {limit}")


@pytest.fixture(scope="module")
def second_api(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """Another API process on the same database (as behind a load balancer)."""
    process, url = start_api(api_env, tmp_path_factory.mktemp("api-b"), name="api-b")
    try:
        yield url
    finally:
        process.stop()


def test_a_stream_sends_a_snapshot_then_an_event_per_status_change_and_epoch_then_ends(
    api_url: str, worker: StoreWorker, spec_factory: Callable[..., dict[str, object]]
) -> None:
    with GradlabClient(api_url, token="") as client:
        created = client.submit_experiment(spec_factory(seeds=(0,), epochs=2))
        run_id = created.runs[0].id
        events = client.events(experiment_id=created.id)
        snapshot = _next(events)
        assert snapshot.event == "snapshot"
        assert [r["status"] for r in snapshot.data["runs"]] == ["queued"]

        worker.claim(run_id)
        running = _next(events, "status")
        assert (running.data["status"], running.data["attempt"]) == ("running", 1)
        assert running.data["epochs_planned"] == 2

        worker.epoch(run_id, 0, 0)
        epoch = _next(events, "epoch")
        assert epoch.data["epoch"] == 0
        assert epoch.data["val_loss"] == epoch_numbers(0, 0).val_loss
        assert int(epoch.id or 0) >= int(running.id or 0)
        progress = _next(events, "status")
        assert progress.data["epochs_done"] == 1

        worker.epoch(run_id, 0, 1)
        worker.finish(run_id)
        seen = [_next(events) for _ in range(3)]
        kinds = [e.event for e in seen]
        assert kinds[0] == "epoch" and seen[0].data["epoch"] == 1
        assert seen[1].data["status"] == "succeeded"
        assert seen[1].data["experiment_status"] == "succeeded"
        assert kinds[2] == "end"
        with pytest.raises(StopIteration):
            next(events)


def test_idle_streams_get_heartbeat_comments(
    api_url: str, spec_factory: Callable[..., dict[str, object]]
) -> None:
    with GradlabClient(api_url, token="") as client:
        created = client.submit_experiment(spec_factory(seeds=(0,)))
    lines: list[str] = []
    with httpx.stream("GET", f"{api_url}/experiments/{created.id}/events", timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        for line in resp.iter_lines():
            lines.append(line)
            if line.startswith(": heartbeat"):
                break
    assert lines[0] == "retry: 3000"
    assert "event: snapshot" in lines


def test_a_stream_resumed_on_another_api_process_misses_no_epoch(
    api_url: str,
    second_api: str,
    worker: StoreWorker,
    spec_factory: Callable[..., dict[str, object]],
) -> None:
    with GradlabClient(api_url, token="") as first, GradlabClient(second_api, token="") as second:
        created = first.submit_experiment(spec_factory(seeds=(0, 7), epochs=5))
        runs = {r.seed: r.id for r in created.runs}
        for run_id in runs.values():
            worker.claim(run_id)
        stream = first.events(experiment_id=created.id, reconnect=False)
        assert _next(stream).event == "snapshot"  # connected (a generator connects on use)
        worker.epoch(runs[0], 0, 0)
        epoch0 = _next(stream, "epoch")
        assert epoch0.data["epoch"] == 0
        last_id = epoch0.id
        stream.close()  # the browser went away (or its API process did)

        for epoch in (1, 2):
            worker.epoch(runs[0], 0, epoch)
        worker.epoch(runs[7], 7, 0)

        resumed = second.events(experiment_id=created.id, last_event_id=last_id)
        got: dict[tuple[int, int], float] = {}
        while len(got) < 4:
            event = _next(resumed)
            assert event.event != "snapshot", "a resumed stream replays, it does not restart"
            if event.event == "epoch":
                got[(event.data["seed"], event.data["epoch"])] = event.data["val_acc"]
        resumed.close()
    expected = {(s, e): epoch_numbers(s, e).val_acc for s, e in [(0, 0), (0, 1), (0, 2), (7, 0)]}
    # epoch 0 of seed 0 may come again (at least once, inside the overlap); none is missing
    assert got == expected


def test_many_streams_share_one_database_poll_per_process(
    api_url: str, spec_factory: Callable[..., dict[str, object]]
) -> None:
    streams = 12
    with GradlabClient(api_url, token="") as client:
        created = client.submit_experiment(spec_factory(seeds=(0,)))
    opened = threading.Barrier(streams + 1)
    stop = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{api_url}/experiments/{created.id}/events", timeout=30) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("event: snapshot"):
                    break
            opened.wait()
            for _ in lines:
                if stop.is_set():
                    return

    threads = [threading.Thread(target=follow, daemon=True) for _ in range(streams)]
    for thread in threads:
        thread.start()
    opened.wait(timeout=60)

    def polls_so_far() -> float:
        return value(httpx.get(f"{api_url}/metrics").text, "gradlab_change_feed_polls_total")

    before = polls_so_far()
    started = time.monotonic()

    def ten_more() -> float | None:  # 2 s at one per 0.2 s, however long a busy machine takes
        polls = polls_so_far()
        return polls if polls >= before + 10 else None

    after = wait_for("10 polls of the change feed", ten_more, 120)
    elapsed = time.monotonic() - started
    stop.set()
    polls = after - before
    # One poll per 0.2 s at most for the whole process: 12 streams polling on their own would
    # make about 12 times as many. A slow machine polls less often, never more.
    print(f"{streams} streams, {elapsed:.1f} s: {polls:.0f} polls")
    assert 0 < polls <= elapsed / 0.2 + 2


def test_unknown_ids_and_foreign_event_ids_are_clear_4xx(api_url: str) -> None:
    with GradlabClient(api_url, token="") as client:
        with pytest.raises(NotFoundError, match="experiment nope not found"):
            next(client.events(experiment_id="nope", reconnect=False))
        with pytest.raises(NotFoundError, match="study nope not found"):
            next(client.events(study_id="nope", reconnect=False))
        created = client.experiments(limit=1)
        experiment_id = next(created).id
        with pytest.raises(ValidationError, match="Last-Event-ID"):
            next(client.events(experiment_id=experiment_id, last_event_id="abc",
                               reconnect=False))


def test_the_event_parser_reads_multiline_data_and_skips_comments() -> None:
    lines = [": heartbeat", "retry: 3000", "", "id: 5", "event: epoch", 'data: {"a":', "data: 1}",
             "", "data: [1]", ""]
    events = list(parse_events(lines))
    assert [(e.id, e.event, e.data) for e in events] == [
        ("5", "epoch", {"a": 1}), ("5", "message", {"value": [1]})
    ]


def test_study_streams_follow_every_cell(
    api_url: str, worker: StoreWorker, unique_name: str
) -> None:
    study = {"name": unique_name, "base": {"depth": 8, "width": 8,
                                           "hyperparameters": {"epochs": 1},
                                           "data": {"train_limit": 200}},
             "grid": {"batch_norm": [False, True]}, "seeds": [3]}
    with GradlabClient(api_url, token="") as client:
        created = client.submit_study(study)
        detail = client.study(created.id)
        events = client.events(study_id=created.id)
        assert _next(events).event == "snapshot"
        run_ids = [c.seeds[0].run_id for c in detail.cells]
        for run_id in run_ids:
            assert run_id is not None
            worker.claim(run_id)
            worker.epoch(run_id, 3, 0)
            worker.finish(run_id)
        ended = _next(events, "end", limit=40)
    assert set(ended.data["runs"]) == set(run_ids)
    assert set(ended.data["runs"].values()) == {"succeeded"}
