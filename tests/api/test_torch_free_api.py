"""The API installs and runs without PyTorch: a fresh venv with ``.[api]`` only (cached by a
hash of pyproject.toml), ``gradlab migrate`` and ``gradlab api`` from it against PostgreSQL and
Redis, and the routes that read trained runs (gradient flow as JSON, CSV and PNG, a study's
report as JSON and HTML) answered from rows the store wrote."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.layers import layer_names
from gradlab.science.spec import ExperimentSpec
from gradlab.store.experiments import refresh_experiment_status
from gradlab.store.models import Run
from gradlab.store.session import make_engine, make_session_factory
from tests.api.synthetic_rows import write_epochs
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.processes import ServiceProcess, free_port, wait_http_ok
from tests.support.venvs import cached_venv, installed_distributions, run
from tests.worker.conftest import REDIS_URL, delete_queue_keys

pytestmark = [pytest.mark.slow, pytest.mark.services]
EPOCHS = 3


@pytest.fixture(scope="module")
def api_bin() -> Path:
    return cached_venv("api", ".[api]")


@pytest.fixture(scope="module")
def database_url(api_bin: Path) -> Iterator[str]:
    url = create_postgres_database("gradlab_torchfree")
    try:
        # The migration job runs in the API image: migrate from the torch-free install.
        run([str(api_bin / "gradlab"), "migrate", "--db", url])
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def api(api_bin: Path, database_url: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[httpx.Client]:
    queue = f"gradlab-torchfree-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "GRADLAB_DATABASE_URL": database_url, "GRADLAB_BROKER_URL": REDIS_URL,
           "GRADLAB_CELERY_QUEUE": queue}
    port = free_port()
    process = ServiceProcess("api", [str(api_bin / "gradlab"), "api", "--port", str(port)], env,
                             tmp_path_factory.mktemp("torchfree-api"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", timeout=90, service=process)
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client
    finally:
        process.stop()
        delete_queue_keys(queue)


def _train_in_the_store(factory: sessionmaker[Session], run_ids: dict[str, int],
                        spec: ExperimentSpec) -> None:
    """What a worker would have written: every epoch's rows, then the run succeeded."""
    layers = layer_names(spec)
    with factory() as session:
        for run_id, seed in run_ids.items():
            write_epochs(session, run_id, seed, range(EPOCHS), len(layers))
            session.execute(update(Run).where(Run.id == run_id).values(
                status="succeeded", epochs_done=EPOCHS, layers=layers, attempt=1,
                test_loss=1.0, test_acc=0.5, best_epoch=EPOCHS - 1))
            experiment_id = session.get(Run, run_id).experiment_id
            refresh_experiment_status(session, experiment_id)
        session.commit()


def test_the_api_venv_has_no_torch(api_bin: Path) -> None:
    installed = installed_distributions(api_bin)
    assert {"fastapi", "sqlalchemy", "celery", "gradlab"} <= installed
    assert not {"torch", "torchvision"} & installed
    assert not any(name.startswith("nvidia-") for name in installed)


def test_submit_then_read_gradient_flow_in_every_format(
    api: httpx.Client, store: sessionmaker[Session]
) -> None:
    spec = {"name": f"torchfree-{uuid.uuid4().hex[:6]}", "depth": 14, "batch_norm": True,
            "seeds": [0, 1], "hyperparameters": {"epochs": EPOCHS}}
    created = api.post("/experiments", json=spec)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "queued"
    _train_in_the_store(store, {r["id"]: r["seed"] for r in body["runs"]},
                        ExperimentSpec.model_validate(spec))

    flow = api.get(f"/experiments/{body['id']}/gradflow")
    assert flow.status_code == 200, flow.text
    assert flow.json()["layers"] == layer_names(ExperimentSpec.model_validate(spec))
    csv = api.get(f"/experiments/{body['id']}/gradflow", params={"format": "csv"})
    assert csv.status_code == 200 and csv.text.startswith("experiment_id,seed,epoch,layer_index")
    png = api.get(f"/experiments/{body['id']}/gradflow", params={"format": "png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_a_study_report_as_json_and_html(api: httpx.Client, store: sessionmaker[Session]) -> None:
    tag = uuid.uuid4().hex[:6]
    study = {"name": f"torchfree-{tag}", "scale": "smoke", "seeds": [0],
             "base": {"name": f"tf-{tag}", "width": 8, "hyperparameters": {"epochs": EPOCHS}},
             "grid": {"depth": [8, 14], "batch_norm": [False, True]},
             "name_template": f"tf-{tag}-{{depth}}{{batch_norm:-bn}}"}
    created = api.post("/studies", json=study)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    matrix = api.get(f"/studies/{study_id}").json()
    for cell in matrix["cells"]:
        spec = ExperimentSpec.model_validate(api.get(f"/experiments/{cell['experiment_id']}")
                                             .json()["spec"])
        _train_in_the_store(store, {s["run_id"]: s["seed"] for s in cell["seeds"]}, spec)

    report = api.get(f"/studies/{study_id}/report")
    assert report.status_code == 200, report.text
    assert len(report.json()["table"]) == 4
    html = api.get(f"/studies/{study_id}/report", params={"format": "html"})
    assert html.status_code == 200 and "<html" in html.text.lower()
