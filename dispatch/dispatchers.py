"""Handing committed run ids to whatever trains them: Celery, or the embedded local worker.

Callers dispatch only after the transaction that created the runs has committed, so a worker
never looks for a row that does not exist yet. Dispatch is a hint, not the record: a lost
message costs latency, never the run, because the database is polled or reaped.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gradlab.dispatch.queues import TRAIN_TASK, producer_app
from gradlab.settings import ServerSettings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


# The most messages the reaper reads from a Redis queue to see which runs have one; a longer
# queue is counted instead (``backlog``).
MAX_PEEK_MESSAGES = 10_000
# kombu's Redis transport keeps the messages that workers hold (prefetched or running,
# unacknowledged) in this hash.
REDIS_UNACKED_KEY = "unacked"


# How long one dispatch may wait for the broker to accept a connection before giving up (the
# runs stay queued in the database; the reaper sends them later).
CONNECT_TIMEOUT_SECONDS = 2.0


class DispatchError(RuntimeError):
    """The broker did not take these runs (they stay queued; the reaper resends them)."""

    def __init__(self, unsent: Sequence[str], cause: Exception) -> None:
        super().__init__(f"{len(unsent)} run(s) not sent: {type(cause).__name__}: {cause}")
        self.unsent = list(unsent)


class RunDispatcher(Protocol):
    def dispatch(self, run_ids: Sequence[str]) -> None: ...


class CeleryDispatcher:
    """Sends one ``gradlab.train_run`` message per run to the broker, all over one connection.

    Fails fast: one connection attempt (at most ``CONNECT_TIMEOUT_SECONDS``), no retries, and
    the first failed publish ends the batch, so a broker that is down costs a submission
    about a second, not seconds per run. Raises :class:`DispatchError` naming the unsent runs.
    """

    def __init__(self, app: Celery) -> None:
        self._app = app

    def dispatch(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        sent = 0
        try:
            with self._app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(
                    max_retries=0, timeout=CONNECT_TIMEOUT_SECONDS
                )
                for run_id in run_ids:
                    self._app.send_task(TRAIN_TASK, args=[run_id], producer=producer, retry=False)
                    sent += 1
        except Exception as exc:  # the runs are committed; the reaper will send them again
            raise DispatchError(run_ids[sent:], exc) from exc

    def backlog(self) -> int | None:
        """Messages waiting in the run queue (None when the broker cannot be asked)."""
        queue = self._app.conf.task_default_queue
        try:
            with self._app.connection_for_write() as connection:
                declared = connection.default_channel.queue_declare(queue=queue, passive=True)
            return int(declared.message_count)
        except Exception as exc:  # missing queue or broker down
            if _is_missing_queue(exc):
                # No queue holds no message: nothing sent yet, or a broker that lost its data
                # (FLUSHALL, a restart without persistence). Every queued run must be resent.
                return 0
            log.info("cannot read the backlog of queue %s: %s", queue, exc)
            return None

    def waiting_run_ids(self) -> set[str] | None:
        """The runs that have a message in the broker: waiting in the run queue or held by a
        worker (Redis only: its lists can be read without consuming them). None when the
        broker cannot be read so (another transport, down, or over ``MAX_PEEK_MESSAGES``).

        Counting messages is not enough: a queue can hold messages of runs that are no longer
        queued (a running run's message restored when a worker reconnected, duplicates), and
        each one would hide a queued run whose message is lost."""
        queue = self._app.conf.task_default_queue
        try:
            with self._app.connection_for_write() as connection:
                channel = connection.default_channel
                client = getattr(channel, "client", None)
                if connection.transport.driver_type != "redis" or client is None:
                    return None
                if client.llen(queue) > MAX_PEEK_MESSAGES:
                    return None
                waiting = client.lrange(queue, 0, -1)
                held = [
                    entry[0] for entry in map(json.loads, client.hvals(REDIS_UNACKED_KEY))
                    if len(entry) == 3 and entry[2] == queue
                ]
        except Exception as exc:  # broker down: the caller falls back to resending on age
            log.info("cannot read the messages of queue %s: %s", queue, exc)
            return None
        return set(_run_ids(waiting)) | set(_run_ids(held))

    def close(self) -> None:
        """Release the broker connections (the API calls this on shutdown)."""
        self._app.close()


class EmbeddedDispatcher:
    """Wakes the local worker process, which finds queued runs in the database itself."""

    def __init__(self, wake: Any | None = None) -> None:
        # a multiprocessing.Event shared with the local worker (None: it polls on its own)
        self._wake = wake

    def dispatch(self, run_ids: Sequence[str]) -> None:
        if run_ids and self._wake is not None:
            self._wake.set()


def make_dispatcher(settings: ServerSettings, *, wake: Any | None = None) -> RunDispatcher:
    """Celery when ``GRADLAB_BROKER_URL`` is set, else the embedded local worker."""
    if settings.broker_url:
        return CeleryDispatcher(producer_app(settings))
    return EmbeddedDispatcher(wake)


def _is_missing_queue(exc: BaseException) -> bool:
    """A passive declare of a queue that does not exist: AMQP's 404 (RabbitMQ), or kombu's
    virtual transports (Redis) saying NOT_FOUND."""
    return getattr(exc, "reply_code", None) == 404 or "NOT_FOUND" in str(exc)


def _run_ids(messages: Iterable[bytes | str | dict[str, Any]]) -> Iterable[str]:
    """The run id of each ``gradlab.train_run`` message as kombu stores it in Redis (a JSON
    envelope whose body is the task's ``[args, kwargs, embed]``); others are skipped."""
    for raw in messages:
        try:
            message = raw if isinstance(raw, dict) else json.loads(raw)
            if message.get("headers", {}).get("task") != TRAIN_TASK:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            if args and isinstance(args[0], str):
                yield args[0]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
