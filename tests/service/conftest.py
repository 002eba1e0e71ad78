"""The service over real HTTP: API processes (uvicorn) on a PostgreSQL database of this
module's own (``module_postgres_url``), written to by the worker's own store functions
(``store.runs``), and read by the Python client, the CLI and a headless Chromium.

No worker trains here: the tests play the worker's part through the exact calls it makes
(claim, record each epoch, finish), so they decide when an epoch lands and what it holds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.layers import layer_names
from gradlab.science.records import GRADFLOW_STATS, EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from gradlab.store import runs
from gradlab.store.session import make_engine, make_session_factory, session_scope
from tests.service.browser import CHROMIUM, CHROMIUM_FLAGS, Page
from tests.support.processes import ServiceProcess, start_api

# Fast feed for tests: one poll every 0.2 s, a heartbeat comment every second.
FAST_EVENTS = {
    "GRADLAB_EVENTS_POLL_SECONDS": "0.2",
    "GRADLAB_EVENTS_HEARTBEAT_SECONDS": "1",
    "GRADLAB_EVENTS_OVERLAP_SECONDS": "5",
}


@pytest.fixture(scope="module")
def store(module_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(module_postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def api_env(module_postgres_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADLAB_", "PROMETHEUS_"))}
    return {**env, "GRADLAB_DATABASE_URL": module_postgres_url, "GRADLAB_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1", **FAST_EVENTS}


@pytest.fixture(scope="module")
def api(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[ServiceProcess, str]]:
    process, url = start_api(api_env, tmp_path_factory.mktemp("api"))
    try:
        yield process, url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api_url(api: tuple[ServiceProcess, str]) -> str:
    return api[1]


@pytest.fixture
def unique_name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


# the layers of the specs below (VGG08, width 8), in depth order, as the worker records them
LAYERS = tuple(layer_names(ExperimentSpec(depth=8, width=8)))


def epoch_numbers(seed: int, epoch: int) -> EpochMetrics:
    """The metrics a test worker records: distinct per seed and epoch, easy to recompute."""
    return EpochMetrics(epoch=epoch, train_loss=4.6 - 0.3 * epoch - 0.01 * seed,
                        train_acc=0.02 + 0.05 * epoch, val_loss=4.5 - 0.25 * epoch - 0.02 * seed,
                        val_acc=0.03 + 0.04 * epoch + 0.001 * seed, lr=1e-3, seconds=2.5 + epoch)


def gradflow_numbers(seed: int, epoch: int, layers: tuple[str, ...] = LAYERS) -> GradFlowEpoch:
    """Gradients that vanish towards the input, as VGG38 without BatchNorm does."""
    values = [10.0 ** (-9 + 8 * j / (len(layers) - 1)) * (1 + 0.1 * seed + 0.01 * epoch)
              for j in range(len(layers))]
    stats = {s: [v * (k + 1) for v in values] for k, s in enumerate(GRADFLOW_STATS)}
    return GradFlowEpoch(epoch=epoch, layers=layers, last_batch=stats, epoch_mean=stats)


class StoreWorker:
    """Plays the worker through the store calls ``execute_run`` makes (lease, epochs, end)."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self.owners: dict[str, str] = {}

    def claim(self, run_id: str) -> None:
        with session_scope(self.factory) as session:
            claimed = runs.claim_run(session, run_id, "test-host:1", lease_seconds=300,
                                     max_attempts=3)
        assert claimed is not None
        self.owners[run_id] = claimed.owner

    def epoch(self, run_id: str, seed: int, epoch: int, *, metrics: EpochMetrics | None = None,
              gradflow: GradFlowEpoch | None = None) -> None:
        """Record one epoch: the numbers given, else this module's (VGG08-shaped) ones."""
        with session_scope(self.factory) as session:
            runs.record_epoch(session, run_id, metrics or epoch_numbers(seed, epoch),
                              gradflow or gradflow_numbers(seed, epoch), None,
                              owner=self.owners[run_id])

    def finish(self, run_id: str, status: str = "succeeded", error: str | None = None) -> None:
        with session_scope(self.factory) as session:
            assert runs.finish_run(session, run_id, status, owner=self.owners[run_id],
                                   error=error)


@pytest.fixture(scope="module")
def worker(store: sessionmaker[Session]) -> StoreWorker:
    return StoreWorker(store)


@pytest.fixture
def spec_factory(unique_name: str) -> Callable[..., dict[str, object]]:
    def make(seeds: tuple[int, ...] = (0, 1), epochs: int = 3, **changes: object
             ) -> dict[str, object]:
        spec: dict[str, object] = {
            "name": unique_name, "depth": 8, "width": 8,
            "hyperparameters": {"epochs": epochs, "batch_size": 50},
            "data": {"dataset": "cifar100", "train_limit": 200, "val_limit": 100,
                     "test_limit": 100},
            "seeds": list(seeds),
        }
        spec.update(changes)
        return spec
    return make


def artifacts(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's headless Chromium (never a downloaded browser), one per test module."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run scripts/ensure_services.sh",
                    pytrace=False)
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def tab(browser: object, api_url: str, tmp_path: Path) -> Iterator[Page]:
    page = Page(browser, api_url, artifacts(tmp_path))
    try:
        yield page
    finally:
        page.close()
