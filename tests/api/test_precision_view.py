"""Precision in the API: the spec's choice is validated, and GET /experiments/{id} shows what
each run computed in (from its reproducibility record) and what its summary averages over."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store.models import Run
from gradlab.store.session import session_scope
from tests.api.conftest import small_spec, submit_three_seeds


def test_an_unknown_precision_is_refused_naming_the_field(client: TestClient,
                                                          unique_name: str) -> None:
    spec = small_spec(unique_name)
    spec["hyperparameters"] = {**spec.get("hyperparameters", {}),  # type: ignore[dict-item]
                               "precision": "fp16"}
    response = client.post("/experiments", json=spec)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["hyperparameters.precision"]
    assert "'auto', 'fp32' or 'bf16'" in errors[0]["reason"]


def test_each_run_shows_its_precision_and_the_summary_says_when_seeds_mixed(
        client: TestClient, postgres_session_factory: sessionmaker[Session],
        unique_name: str) -> None:
    experiment, ids = submit_three_seeds(client, unique_name)
    before = client.get(f"/experiments/{experiment}").json()
    assert [r["precision"] for r in before["runs"]] == [None, None, None]  # not started yet
    with session_scope(postgres_session_factory) as session:
        for run_id, precision in zip(ids, ("bf16", "bf16", "fp32"), strict=True):
            session.execute(update(Run).where(Run.id == run_id).values(
                status="succeeded", test_acc=0.5, test_loss=2.0,
                environment={"device": "cpu", "precision": precision}))

    shown = client.get(f"/experiments/{experiment}").json()
    assert shown["spec"]["hyperparameters"]["precision"] == "auto"
    assert [(r["seed"], r["precision"]) for r in shown["runs"]] == [
        (0, "bf16"), (1, "bf16"), (2, "fp32")]
    assert shown["summary"]["precision"] == "mixed (bf16 x2, fp32 x1)"
