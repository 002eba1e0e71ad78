"""The Celery app's long-task settings come from gradlab's settings (what a worker runs with)."""

from __future__ import annotations

from gradlab.dispatch.dispatchers import CeleryDispatcher, EmbeddedDispatcher, make_dispatcher
from gradlab.dispatch.queues import REAP_TASK, TRAIN_TASK, producer_app
from gradlab.settings import ServerSettings, WorkerSettings
from gradlab.worker.celery_app import make_celery


def test_long_task_settings_follow_the_configured_broker_queue_and_timeouts() -> None:
    settings = WorkerSettings(broker_url="redis://127.0.0.1:6379/3", celery_queue="gpu-a100",
                              broker_visibility_timeout=86_400, lease_seconds=120)
    conf = make_celery(settings).conf
    assert conf.broker_url == "redis://127.0.0.1:6379/3"
    assert conf.broker_transport_options["visibility_timeout"] == 86_400
    assert conf.task_routes[TRAIN_TASK] == {"queue": "gpu-a100"}
    # The reaper's messages never wait behind runs: a queue of their own.
    assert conf.task_routes[REAP_TASK] == {"queue": "gpu-a100.reaper"}
    assert conf.task_default_queue == "gpu-a100"
    assert conf.beat_schedule["reap-lost-runs"]["task"] == REAP_TASK
    assert conf.beat_schedule["reap-lost-runs"]["schedule"] == 60
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.task_ignore_result) == (
        True, True, True)
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True


def test_dispatcher_is_celery_with_a_broker_and_embedded_without() -> None:
    assert isinstance(make_dispatcher(WorkerSettings(broker_url="redis://127.0.0.1:6379/3")),
                      CeleryDispatcher)
    assert isinstance(make_dispatcher(WorkerSettings(broker_url=None)), EmbeddedDispatcher)


def test_backlog_counts_the_messages_waiting_in_the_real_redis_queue() -> None:
    import uuid

    from tests.worker.conftest import REDIS_URL, delete_queue_keys

    queue = f"gradlab-backlog-{uuid.uuid4().hex[:8]}"
    dispatcher = CeleryDispatcher(
        producer_app(ServerSettings(broker_url=REDIS_URL, celery_queue=queue)))
    try:
        dispatcher.dispatch(["run-a", "run-b"])
        assert dispatcher.backlog() == 2
    finally:
        dispatcher.close()
        delete_queue_keys(queue)


def test_runs_sent_after_the_broker_lost_its_data_reach_the_run_queue() -> None:
    # FLUSHALL (or a Redis restart without persistence) also drops kombu's binding of the
    # queue; a producer that had declared it before would route into Redis's dead letters.
    import uuid

    import redis

    from tests.worker.conftest import REDIS_URL, delete_queue_keys

    queue = f"gradlab-lost-{uuid.uuid4().hex[:8]}"
    dispatcher = CeleryDispatcher(
        producer_app(ServerSettings(broker_url=REDIS_URL, celery_queue=queue)))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        dispatcher.dispatch(["before"])
        delete_queue_keys(queue)  # this queue's share of a FLUSHALL: messages and binding
        dispatcher.dispatch(["after"])
        assert dispatcher.backlog() == 1
        (body,) = client.lrange(queue, 0, -1)
        assert b"after" in body
    finally:
        dispatcher.close()
        delete_queue_keys(queue)
