"""API tests: the real app over HTTP (httpx through Starlette's TestClient) on a real,
migrated PostgreSQL database (``postgres_url`` from tests/support/databases.py).

Tests share one database per session and keep apart by giving their experiments unique names.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
from gradlab.store.models import Run


class RecordingDispatcher:
    """Test double for ``RunDispatcher``: records the ids it is given and trains nothing.

    It also records which of those runs a fresh session could read at dispatch time, which
    shows whether dispatch happened after the submitting transaction committed.
    """

    def __init__(self, factory: sessionmaker[Session] | None = None) -> None:
        self.factory = factory
        self.dispatched: list[str] = []
        self.visible_at_dispatch: list[str] = []

    def dispatch(self, run_ids: Sequence[str]) -> None:
        self.dispatched.extend(run_ids)
        if self.factory is not None:
            with self.factory() as session:
                found = session.scalars(select(Run.id).where(Run.id.in_(list(run_ids))))
                self.visible_at_dispatch.extend(found)


class FailingDispatcher:
    """Test double for a broker that is down."""

    def dispatch(self, run_ids: Sequence[str]) -> None:
        raise ConnectionError("broker unreachable")


@pytest.fixture
def settings(postgres_url: str) -> ApiSettings:
    return ApiSettings(database_url=postgres_url, broker_url=None)


@pytest.fixture
def dispatcher(postgres_session_factory: sessionmaker[Session]) -> RecordingDispatcher:
    return RecordingDispatcher(postgres_session_factory)


@pytest.fixture
def client(settings: ApiSettings, dispatcher: RecordingDispatcher) -> Iterator[TestClient]:
    with TestClient(create_app(settings, dispatcher=dispatcher)) as test_client:
        yield test_client


@pytest.fixture
def unique_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def small_spec(name: str, seeds: Sequence[int] = (0, 1), **changes: object) -> dict[str, object]:
    """A valid VGG08 spec as JSON (1 epoch, tiny data)."""
    spec: dict[str, object] = {
        "name": name,
        "depth": 8,
        "width": 8,
        "hyperparameters": {"epochs": 1, "batch_size": 50},
        "data": {"dataset": "cifar100", "train_limit": 200, "val_limit": 100, "test_limit": 100},
        "seeds": list(seeds),
    }
    spec.update(changes)
    return spec


def submit_three_seeds(client: TestClient, name: str) -> tuple[str, list[str]]:
    """A small experiment of seeds 0, 1, 2 submitted: its id and its runs' ids."""
    created = client.post("/experiments", json=small_spec(name, seeds=(0, 1, 2)))
    assert created.status_code in (201, 202), created.text
    body = created.json()
    return body["id"], [r["id"] for r in body["runs"]]
