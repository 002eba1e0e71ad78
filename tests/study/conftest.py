"""Fixtures for the study tests: the real API app over HTTP on PostgreSQL, and the real data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
from tests.support.processes import real_data_dir


class RecordingDispatcher:
    """Records the run ids the API hands to the workers (trains nothing)."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []

    def dispatch(self, run_ids: Sequence[str]) -> None:
        self.dispatched.extend(run_ids)


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def client(postgres_url: str, dispatcher: RecordingDispatcher) -> Iterator[TestClient]:
    settings = ApiSettings(database_url=postgres_url, broker_url=None)
    with TestClient(create_app(settings, dispatcher=dispatcher)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.fail("CIFAR-100 not found: set GRADLAB_DATA_DIR (see README)")
    return found
