"""``DELETE /experiments/{id}``: a finished experiment goes with its rows and every one of its
checkpoints in the checkpoint store (a folder here); one still training is refused (409)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.records import GRADFLOW_STATS, EpochMetrics, GradFlowEpoch
from gradlab.settings import ApiSettings
from gradlab.store import runs
from gradlab.store.models import Checkpoint, EpochMetricsRow, GradFlowEpochRow
from gradlab.store.session import session_scope
from tests.api.conftest import small_spec

LAYERS = ("a", "b", "c")


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path) -> ApiSettings:
    return ApiSettings(database_url=postgres_url, broker_url=None,
                       checkpoint_store=str(tmp_path / "checkpoints"))


def _train_two_epochs(client: TestClient, factory: sessionmaker[Session], run_id: str) -> None:
    """What a worker writes: two epochs, a checkpoint each (the first one pruned), finished."""
    checkpoints = client.app.state.checkpoint_store
    with session_scope(factory) as session:
        claimed = runs.claim_run(session, run_id, "w", lease_seconds=60, max_attempts=3)
    values = {s: [1e-3, 2e-3, 3e-3] for s in GRADFLOW_STATS}
    for epoch in (0, 1):
        ref = checkpoints.save(run_id, epoch, claimed.attempt, f"state {epoch}".encode())
        with session_scope(factory) as session:
            runs.record_epoch(session, run_id, EpochMetrics(epoch, 4.0, 0.1, 4.1, 0.1, 1e-3, 1.0),
                              GradFlowEpoch(epoch, LAYERS, values, values), ref,
                              owner=claimed.owner)
        checkpoints.prune(run_id, ref)
    with session_scope(factory) as session:
        runs.finish_run(session, run_id, "succeeded", owner=claimed.owner)


def _count(factory: sessionmaker[Session], model: type, run_ids: list[str]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)
                              .where(model.run_id.in_(run_ids)))


def test_a_finished_experiment_is_deleted_with_its_rows_and_checkpoint_objects(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str,
    settings: ApiSettings,
) -> None:
    created = client.post("/experiments", json=small_spec(unique_name)).json()
    experiment_id, run_ids = created["id"], [r["id"] for r in created["runs"]]

    refused = client.delete(f"/experiments/{experiment_id}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"] == "conflict" and "cancel it" in refused.json()["detail"]

    for run_id in run_ids:
        _train_two_epochs(client, postgres_session_factory, run_id)
    folder = Path(settings.checkpoint_store)
    assert sorted(p.name for r in run_ids for p in (folder / r).iterdir()) == [
        "000001-1.ckpt", "000001-1.ckpt"]
    assert client.get(f"/experiments/{experiment_id}/gradflow").status_code == 200  # cached

    assert client.delete(f"/experiments/{experiment_id}").status_code == 204
    assert not any((folder / r).exists() for r in run_ids)
    for model in (EpochMetricsRow, GradFlowEpochRow, Checkpoint):
        assert _count(postgres_session_factory, model, run_ids) == 0
    for path in ("", "/gradflow", "/metrics"):
        assert client.get(f"/experiments/{experiment_id}{path}").status_code == 404
    gone = client.delete(f"/experiments/{experiment_id}")
    assert gone.status_code == 404 and gone.json()["type"] == "not_found"
