"""GET /experiments/{id} says, per run, which fused pack trained it (null when alone)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store.models import Run
from gradlab.store.session import session_scope
from tests.api.conftest import submit_three_seeds


def test_each_run_shows_its_pack_or_null_when_trained_alone(
        client: TestClient, postgres_session_factory: sessionmaker[Session],
        unique_name: str) -> None:
    experiment, ids = submit_three_seeds(client, unique_name)
    with session_scope(postgres_session_factory) as session:
        session.execute(update(Run).where(Run.id.in_(ids[:2])).values(pack="a1b2c3d4e5f6"))

    runs = client.get(f"/experiments/{experiment}").json()["runs"]
    assert [(r["seed"], r["pack"]) for r in runs] == [
        (0, "a1b2c3d4e5f6"), (1, "a1b2c3d4e5f6"), (2, None)]
