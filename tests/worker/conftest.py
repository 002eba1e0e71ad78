"""Real services for the worker tests: Redis, a Celery worker process, the API over HTTP."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import TrainingResult
from gradlab.store.session import make_engine, make_session_factory
from tests.support.processes import (
    VENV_BIN,
    ServiceProcess,
    free_port,
    real_data_dir,
    wait_for,
    wait_http_ok,
)

REDIS_URL = os.environ.get("GRADLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Short leases so a killed worker's run is found in seconds; the reaper runs every 5 s.
LEASE_SECONDS = 8


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real CIFAR-100 not available (set GRADLAB_DATA_DIR)")
    return found


@pytest.fixture(scope="session")
def reference(data_dir: Path) -> TrainingResult:
    """The fault tests' run trained without interruption, here (see reference_run.py)."""
    from tests.worker.reference_run import train_reference

    return train_reference(data_dir)


def delete_queue_keys(queue: str) -> None:
    """Remove a test queue and kombu's bindings for it from Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"*{queue}*"):
        client.delete(key)


@pytest.fixture(scope="module")
def service_env(module_postgres_url: str, data_dir: Path) -> Iterator[dict[str, str]]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (`make services`)",
                    pytrace=False)
    queue = f"gradlab-test-{uuid.uuid4().hex[:8]}"
    yield {
        **os.environ,
        # A database of the module's own: the worker's reaper must not find (and train) the
        # runs other tests leave behind in the session database.
        "GRADLAB_DATABASE_URL": module_postgres_url,
        "GRADLAB_BROKER_URL": REDIS_URL,
        # A queue of our own: other test sessions on the same Redis never see our runs.
        "GRADLAB_CELERY_QUEUE": queue,
        "GRADLAB_DATA_DIR": str(data_dir),
        "GRADLAB_LEASE_SECONDS": str(LEASE_SECONDS),
        "GRADLAB_MAX_ATTEMPTS": "3",
        "GRADLAB_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    delete_queue_keys(queue)


def start_reaper(env: dict[str, str], logs: Path, name: str = "reaper") -> ServiceProcess:
    """``gradlab reaper`` (beat plus the one consumer of the reaper queue), ready."""
    reaper = ServiceProcess(
        name, [str(VENV_BIN / "gradlab"), "reaper", "--schedule", str(logs / f"{name}-beat")],
        env, logs,
    )
    wait_ready(reaper)
    return reaper


def start_worker(env: dict[str, str], logs: Path, name: str = "celery-worker") -> ServiceProcess:
    """``gradlab worker`` with one prefork child, ready."""
    worker = ServiceProcess(
        name, [str(VENV_BIN / "gradlab"), "worker", "--concurrency", "1"], env, logs
    )
    wait_ready(worker)
    return worker


def wait_ready(process: ServiceProcess) -> None:
    wait_for(f"the {process.name} to be ready", lambda: "ready." in process.log_tail(20_000),
             timeout=120, service=process)


@pytest.fixture(scope="module")
def celery_worker(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One training worker (one prefork child) and the reaper beside it, as deployed, except
    that the worker packs as it would on a GPU (on the CPU it trains runs alone by default):
    the fused path through Celery is what the end-to-end tests check."""
    logs = tmp_path_factory.mktemp("celery")
    reaper = start_reaper(service_env, logs)
    try:
        worker = start_worker({**service_env, "GRADLAB_PACK_SIZE": "4"}, logs)
        try:
            yield worker
        finally:
            worker.stop()
    finally:
        reaper.stop()


@pytest.fixture(scope="module")
def api_url(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    api = ServiceProcess(
        "api",
        [sys.executable, "-m", "uvicorn", "--factory", "gradlab.api.app:create_app",
         "--host", "127.0.0.1", "--port", str(port)],
        service_env,
        tmp_path_factory.mktemp("api"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", timeout=60, service=api)
        yield url
    finally:
        api.stop()


@pytest.fixture(scope="module")
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def store(module_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(module_postgres_url)
    yield make_session_factory(engine)
    engine.dispose()
