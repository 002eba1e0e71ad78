"""POST /experiments and GET /experiments/{id}: validation, storage, dispatch after commit."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.app import create_app
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import ApiSettings
from gradlab.store.experiments import spec_hash
from gradlab.store.models import Experiment, Run
from tests.api.conftest import FailingDispatcher, RecordingDispatcher, small_spec
from tests.support.prometheus import value


def _field_errors(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert body["type"] == "validation_error"
    return {e["field"]: e["reason"] for e in body["errors"]}


def test_invalid_depth_is_422_naming_the_field_and_the_nearest_depths(
    client: TestClient, dispatcher: RecordingDispatcher, unique_name: str
) -> None:
    response = client.post("/experiments", json=small_spec(unique_name, depth=37))
    assert response.status_code == 422
    assert _field_errors(response) == {
        "depth": "depth must be 6k+2 for 3 stages; nearest: 32 or 38"
    }
    assert "depth must be 6k+2" in response.json()["detail"]
    assert dispatcher.dispatched == []


def test_unknown_fields_are_rejected_at_any_level(client: TestClient, unique_name: str) -> None:
    spec = small_spec(unique_name, colour="red")
    spec["hyperparameters"] = {"learnig_rate": 0.1}
    response = client.post("/experiments", json=spec)
    assert response.status_code == 422
    assert _field_errors(response) == {
        "colour": "unknown field",
        "hyperparameters.learnig_rate": "unknown field",
    }


def test_bad_values_name_field_and_reason(client: TestClient, unique_name: str) -> None:
    spec = small_spec(unique_name, seeds=[1, 1])
    spec["hyperparameters"] = {"learning_rate": -1}
    errors = _field_errors(client.post("/experiments", json=spec))
    assert errors["seeds"] == "seeds must be distinct"
    assert errors["hyperparameters.learning_rate"].startswith("Input should be greater than 0")


def test_malformed_json_is_a_400_not_a_traceback(client: TestClient) -> None:
    response = client.post(
        "/experiments", content=b'{"depth": 8,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "malformed_json"
    assert "Traceback" not in response.text


def test_nothing_is_stored_for_an_invalid_spec(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    client.post("/experiments", json=small_spec(unique_name, depth=37))
    with postgres_session_factory() as session:
        assert session.scalars(select(Experiment).where(Experiment.name == unique_name)).all() == []


def test_create_stores_one_queued_run_per_seed_and_dispatches_after_commit(
    client: TestClient,
    dispatcher: RecordingDispatcher,
    postgres_session_factory: sessionmaker[Session],
    unique_name: str,
) -> None:
    response = client.post("/experiments", json=small_spec(unique_name, seeds=[512, 0, 256]))
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "queued"
    assert [r["seed"] for r in body["runs"]] == [0, 256, 512]
    assert {r["status"] for r in body["runs"]} == {"queued"}
    run_ids = [r["id"] for r in body["runs"]]
    assert dispatcher.dispatched == run_ids
    # the dispatcher's own session could already read every run: the commit came first
    assert sorted(dispatcher.visible_at_dispatch) == sorted(run_ids)

    with postgres_session_factory() as session:
        experiment = session.get(Experiment, body["id"])
        assert experiment is not None
        stored = ExperimentSpec.model_validate(experiment.spec)
        assert experiment.spec_hash == spec_hash(stored)
        runs = session.scalars(select(Run).where(Run.experiment_id == body["id"])).all()
        assert sorted(r.id for r in runs) == sorted(run_ids)


def test_spec_hash_ignores_seeds_only() -> None:
    base = ExperimentSpec.model_validate(small_spec("a", seeds=[0, 1]))
    assert spec_hash(base) == spec_hash(base.model_copy(update={"seeds": [5]}))
    assert spec_hash(base) != spec_hash(base.with_updates({"hyperparameters.weight_decay": 1e-3}))


def test_read_shows_spec_runs_and_an_empty_summary(client: TestClient, unique_name: str) -> None:
    created = client.post("/experiments", json=small_spec(unique_name, seeds=[3])).json()
    response = client.get(f"/experiments/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["spec"]["depth"] == 8 and body["spec"]["seeds"] == [3]
    assert body["name"] == unique_name
    (run,) = body["runs"]
    assert run["seed"] == 3 and run["status"] == "queued" and run["epochs_done"] == 0
    assert run["error"] is None
    assert body["summary"]["finished_seeds"] == 0
    assert body["summary"]["metrics"]["test_acc"] == {"mean": None, "std": None, "n": 0}


def test_unknown_experiment_is_404_with_type_and_detail(client: TestClient) -> None:
    response = client.get("/experiments/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {
        "type": "not_found",
        "detail": "experiment does-not-exist not found",
    }


def test_a_failed_dispatch_still_answers_201_and_keeps_the_runs_queued(
    settings: ApiSettings, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    with TestClient(create_app(settings, dispatcher=FailingDispatcher())) as client:
        before = value(client.get("/metrics").text, "gradlab_dispatch_failures_total")
        response = client.post("/experiments", json=small_spec(unique_name))
        assert response.status_code == 201
        after = value(client.get("/metrics").text, "gradlab_dispatch_failures_total")
        assert after - before == 2  # counted per run left unsent (two seeds)
    with postgres_session_factory() as session:
        statuses = session.scalars(
            select(Run.status).where(Run.experiment_id == response.json()["id"])
        ).all()
    assert statuses == ["queued", "queued"]


def test_openapi_has_readable_operation_ids_and_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "experiments-create",
        "experiments-list",
        "experiments-gradflow",
        "health-readyz",
    } <= ids
    assert schema["components"]["schemas"]["ExperimentSpec"]["examples"][0]["depth"] == 38


def test_every_documented_422_is_the_apis_own_error_shape(client: TestClient) -> None:
    """FastAPI documents its own HTTPValidationError for a route that does not say otherwise,
    but every 422 this API sends is ValidationErrorRead: a client generated from the schema
    would misread it."""
    schema = client.get("/openapi.json").json()
    wrong = [f"{method.upper()} {path}" for path, operations in schema["paths"].items()
             for method, operation in operations.items()
             if "HTTPValidationError" in str(operation.get("responses", {}).get("422"))]
    assert wrong == []


class _CommitFailsSession(Session):
    """A session whose commit fails like a database that went away at that moment."""

    def commit(self) -> None:
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))


def test_a_failed_commit_is_an_error_and_dispatches_nothing(
    settings: ApiSettings, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    dispatcher = RecordingDispatcher()
    app = create_app(settings, dispatcher=dispatcher)
    app.state.session_factory = sessionmaker(bind=app.state.engine, class_=_CommitFailsSession)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/experiments", json=small_spec(unique_name))
    assert response.status_code == 503
    assert response.json()["type"] == "service_unavailable"
    assert dispatcher.dispatched == []
    with postgres_session_factory() as session:
        assert session.scalars(select(Experiment).where(Experiment.name == unique_name)).all() == []
