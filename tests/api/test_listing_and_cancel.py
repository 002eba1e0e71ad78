"""GET /experiments (filters, cursor pages) and POST /experiments/{id}/cancel."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
from gradlab.store.experiments import refresh_experiment_status
from gradlab.store.models import Run
from tests.api.conftest import RecordingDispatcher, small_spec


def _create(client: TestClient, name: str, seeds: list[int] | None = None) -> dict:
    response = client.post("/experiments", json=small_spec(name, seeds=seeds or [0]))
    assert response.status_code == 201
    return response.json()


def test_cursor_pages_cover_every_experiment_once_newest_first(
    client: TestClient, unique_name: str
) -> None:
    created = [_create(client, unique_name)["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"name": unique_name, "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/experiments", params=params).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(created))


def test_a_page_ends_with_no_cursor_when_nothing_follows(
    client: TestClient, unique_name: str
) -> None:
    _create(client, unique_name)
    page = client.get("/experiments", params={"name": unique_name, "limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"] is None


def test_status_filter(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    queued = _create(client, unique_name)
    running = _create(client, unique_name)
    with postgres_session_factory() as session:
        session.execute(
            update(Run).where(Run.experiment_id == running["id"]).values(status="running")
        )
        refresh_experiment_status(session, running["id"])
        session.commit()
    for status, expected in (("queued", queued), ("running", running)):
        page = client.get("/experiments", params={"name": unique_name, "status": status}).json()
        assert [item["id"] for item in page["items"]] == [expected["id"]]
        assert page["items"][0]["status"] == status


def test_bad_cursor_and_bad_status_are_422(client: TestClient) -> None:
    response = client.get("/experiments", params={"cursor": "not-a-cursor"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"
    response = client.get("/experiments", params={"status": "sleeping"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "status"


def test_cancel_cancels_queued_runs_now_and_leaves_running_ones_to_the_worker(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    created = _create(client, unique_name, seeds=[0, 1, 2])
    running_id = created["runs"][1]["id"]
    with postgres_session_factory() as session:
        session.execute(update(Run).where(Run.id == running_id).values(status="running"))
        session.commit()

    response = client.post(f"/experiments/{created['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert {r["seed"]: r["status"] for r in body["runs"]} == {
        0: "cancelled",
        1: "running",
        2: "cancelled",
    }
    assert body["cancel_requested_at"] is not None
    assert body["status"] == "running"

    again = client.post(f"/experiments/{created['id']}/cancel").json()
    assert again["cancel_requested_at"] == body["cancel_requested_at"]

    # the worker sees the request and stops its run: the experiment ends cancelled
    with postgres_session_factory() as session:
        session.execute(update(Run).where(Run.id == running_id).values(status="cancelled"))
        refresh_experiment_status(session, created["id"])
        session.commit()
    assert client.get(f"/experiments/{created['id']}").json()["status"] == "cancelled"


def test_cancel_of_a_finished_experiment_changes_nothing(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    created = _create(client, unique_name)
    with postgres_session_factory() as session:
        session.execute(
            update(Run).where(Run.experiment_id == created["id"]).values(status="succeeded")
        )
        refresh_experiment_status(session, created["id"])
        session.commit()
    body = client.post(f"/experiments/{created['id']}/cancel").json()
    assert body["status"] == "succeeded"
    assert body["cancel_requested_at"] is None


def test_cancel_of_an_unknown_experiment_is_404(client: TestClient) -> None:
    response = client.post("/experiments/nope/cancel")
    assert response.status_code == 404
    assert response.json()["type"] == "not_found"


def test_cursor_pages_on_sqlite_too(sqlite_url: str, unique_name: str) -> None:
    """Embedded mode stores timestamps as text; the keyset must still order and resume."""
    settings = ApiSettings(database_url=sqlite_url, broker_url=None)
    with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
        created = [_create(client, unique_name)["id"] for _ in range(3)]
        first = client.get("/experiments", params={"name": unique_name, "limit": 2}).json()
        rest = client.get(
            "/experiments",
            params={"name": unique_name, "limit": 2, "cursor": first["next_cursor"]},
        ).json()
    assert [i["id"] for i in first["items"] + rest["items"]] == list(reversed(created))
    assert rest["next_cursor"] is None
