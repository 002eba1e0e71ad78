"""Users kept apart: bearer tokens when GRADLAB_AUTH_REQUIRED is on, owners on experiments and
studies (another user's answer 404 on every route, admins see all), and the per-user limit on
queued + running runs (429). Real app over HTTP on PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount

from gradlab.api.app import create_app
from gradlab.science.layers import layer_names
from gradlab.science.spec import ExperimentSpec
from gradlab.settings import ApiSettings
from gradlab.store.session import session_scope
from gradlab.store.users import create_token, revoke_token
from tests.api.conftest import RecordingDispatcher, small_spec
from tests.api.synthetic_rows import insert_experiment

PUBLIC = {"/healthz", "/readyz", "/metrics"}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Person:
    name: str
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _person(factory: sessionmaker[Session], *, admin: bool = False) -> Person:
    name = f"u-{uuid.uuid4().hex[:8]}"
    with session_scope(factory) as session:
        issued = create_token(session, name, admin=admin)
        from gradlab.store.users import viewer_for_token

        viewer = viewer_for_token(session, issued.token)
    assert viewer is not None and viewer.user_id is not None
    return Person(name, issued.token, viewer.user_id)


@pytest.fixture
def auth_settings(postgres_url: str) -> ApiSettings:
    return ApiSettings(database_url=postgres_url, broker_url=None, auth_required=True,
                       max_active_runs_per_user=4)


@pytest.fixture
def auth_client(auth_settings: ApiSettings) -> Iterator[TestClient]:
    app = create_app(auth_settings, dispatcher=RecordingDispatcher())
    with TestClient(app) as client:
        yield client


@pytest.fixture
def alice(postgres_session_factory: sessionmaker[Session]) -> Person:
    return _person(postgres_session_factory)


@pytest.fixture
def bob(postgres_session_factory: sessionmaker[Session]) -> Person:
    return _person(postgres_session_factory)


@pytest.fixture
def admin(postgres_session_factory: sessionmaker[Session]) -> Person:
    return _person(postgres_session_factory, admin=True)


def test_without_a_token_every_route_but_health_and_metrics_is_401_naming_how_to_get_one(
    auth_client: TestClient,
) -> None:
    paths = auth_client.app.openapi()["paths"]  # type: ignore[attr-defined]
    checked = 0
    for template, operations in paths.items():
        if template in PUBLIC:
            continue
        path = template.replace("{experiment_id}", "x").replace("{study_id}", "x")
        for method, operation in operations.items():
            assert "401" in operation["responses"], (method, template)
            response = auth_client.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert "gradlab token create --user NAME" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 9
    for path in ("/healthz", "/readyz", "/metrics"):
        assert auth_client.get(path).status_code == 200, path


def _readme_public_routes() -> set[str]:
    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("Public routes with auth on"))
    return set(re.findall(r"`(/[^`]*)`", line.split(";")[0]))


def test_with_auth_on_exactly_the_readmes_public_routes_answer_without_a_token(
    auth_client: TestClient,
) -> None:
    """Every route the app serves, in its schema or not (the dashboard's page and files, the
    schema, FastAPI's documentation pages), asked without a token: the ones that answer are
    exactly those the README lists; the schema needs a token; /docs and /redoc (scripts from a
    CDN, on the dashboard's origin) are not served at all."""
    answered: set[str] = set()
    for route in _every_route(auth_client.app.routes):  # type: ignore[attr-defined]
        path = route.path  # type: ignore[attr-defined]
        probe = path.replace("{experiment_id}", "x").replace("{study_id}", "x")
        if isinstance(route, Mount):
            probe, path = f"{path}/dashboard.js", f"{path}/"
        methods = getattr(route, "methods", None) or {"GET"}
        for method in methods - {"HEAD"}:
            if auth_client.request(method, probe).status_code != 401:
                answered.add(path)
    assert answered == _readme_public_routes()
    assert auth_client.get("/openapi.json").status_code == 401
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert auth_client.get(page).status_code == 404, page
    paths = auth_client.get("/openapi.json", headers=_bearer(auth_client)).json()["paths"]
    assert "/experiments" in paths


def _every_route(routes: list[Any]) -> list[Any]:
    """The app's routes, those of included routers too (FastAPI wraps an included router)."""
    flat = []
    for route in routes:
        included = getattr(route, "original_router", None)
        flat += _every_route(included.routes) if included is not None else [route]
    return flat


def _bearer(client: TestClient) -> dict[str, str]:
    factory = client.app.state.session_factory  # type: ignore[attr-defined]
    return _person(factory).headers


def test_an_unknown_or_revoked_token_is_401(
    auth_client: TestClient, alice: Person, postgres_session_factory: sessionmaker[Session]
) -> None:
    assert auth_client.get("/experiments", headers=alice.headers).status_code == 200
    wrong = {"Authorization": "Bearer glt_not-a-token"}
    assert auth_client.get("/experiments", headers=wrong).status_code == 401
    with session_scope(postgres_session_factory) as session:
        assert revoke_token(session, alice.token[:12])
    response = auth_client.get("/experiments", headers=alice.headers)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_tokens_are_stored_hashed(
    alice: Person, postgres_session_factory: sessionmaker[Session]
) -> None:
    from sqlalchemy import select

    from gradlab.store.models import ApiToken
    from gradlab.store.users import hash_token

    with postgres_session_factory() as session:
        stored = session.scalars(select(ApiToken.token_hash)).all()
    assert hash_token(alice.token) in stored and alice.token not in stored


def test_another_users_experiment_is_404_on_every_route_and_an_admin_sees_it(
    auth_client: TestClient,
    alice: Person,
    bob: Person,
    admin: Person,
    postgres_session_factory: sessionmaker[Session],
) -> None:
    spec = ExperimentSpec.model_validate(small_spec(f"owned-{uuid.uuid4().hex[:6]}"))
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layer_names(spec),
                                         epochs=2, owner_id=alice.user_id)
    reads = [f"/experiments/{experiment_id}", f"/experiments/{experiment_id}/metrics",
             f"/experiments/{experiment_id}/diagnostics"] + [
        f"/experiments/{experiment_id}/gradflow?format={f}" for f in ("json", "csv", "png")
    ]
    for path in reads:  # alice first: her views are now cached
        assert auth_client.get(path, headers=alice.headers).status_code == 200, path
    for path in reads:  # the cache never answers bob with alice's view
        response = auth_client.get(path, headers=bob.headers)
        assert response.status_code == 404, path
        assert response.json()["type"] == "not_found"
        assert auth_client.get(path, headers=admin.headers).status_code == 200, path
    listed = auth_client.get("/experiments", params={"name": spec.name}, headers=bob.headers)
    assert listed.json()["items"] == []
    mine = auth_client.get("/experiments", params={"name": spec.name}, headers=alice.headers)
    assert [e["id"] for e in mine.json()["items"]] == [experiment_id]
    cancel = auth_client.post(f"/experiments/{experiment_id}/cancel", headers=bob.headers)
    assert cancel.status_code == 404
    with auth_client.stream("GET", f"/experiments/{experiment_id}/events",
                            headers=bob.headers) as events:
        assert events.status_code == 404
    deleted = auth_client.delete(f"/experiments/{experiment_id}", headers=bob.headers)
    assert deleted.status_code == 404
    assert auth_client.get(reads[0], headers=alice.headers).status_code == 200  # still there


def test_studies_are_owned_and_never_reuse_another_users_experiments(
    auth_client: TestClient, alice: Person, bob: Person, admin: Person
) -> None:
    tag = uuid.uuid4().hex[:8]
    study = {"name": f"own-{tag}", "base": {"name": tag, "depth": 8, "width": 8,
                                            "hyperparameters": {"epochs": 1}},
             "grid": {"batch_norm": [False, True]}, "seeds": [0]}
    mine = auth_client.post("/studies", json=study, headers=alice.headers).json()
    theirs = auth_client.post("/studies", json=study, headers=bob.headers)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["created"] and theirs.json()["reused_experiment_ids"] == []
    assert theirs.json()["id"] != mine["id"]
    for path in (f"/studies/{mine['id']}", f"/studies/{mine['id']}/report",
                 f"/studies/{mine['id']}/report?format=html"):
        assert auth_client.get(path, headers=bob.headers).status_code == 404, path
        assert auth_client.get(path, headers=admin.headers).status_code == 200, path
    cells = auth_client.get(f"/studies/{mine['id']}", headers=alice.headers).json()["cells"]
    for cell in cells:
        path = f"/experiments/{cell['experiment_id']}"
        assert auth_client.get(path, headers=bob.headers).status_code == 404
    listed = auth_client.get("/studies", headers=bob.headers).json()
    assert mine["id"] not in {s["id"] for s in listed}
    for action in ("resubmit", "cancel"):
        path = f"/studies/{mine['id']}/{action}"
        assert auth_client.post(path, headers=bob.headers).status_code == 404, path
    with auth_client.stream("GET", f"/studies/{mine['id']}/events", headers=bob.headers) as ev:
        assert ev.status_code == 404


def test_queued_and_running_runs_are_capped_per_user_with_429_naming_the_limit(
    auth_client: TestClient, alice: Person, bob: Person
) -> None:
    name = f"cap-{uuid.uuid4().hex[:6]}"
    first = auth_client.post("/experiments", json=small_spec(name, seeds=[0, 1, 2]),
                             headers=alice.headers)
    assert first.status_code == 201
    refused = auth_client.post("/experiments", json=small_spec(name, seeds=[3, 4]),
                               headers=alice.headers)
    assert refused.status_code == 429
    body = refused.json()
    assert body["type"] == "too_many_runs"
    assert "limit is 4" in body["detail"] and "GRADLAB_MAX_ACTIVE_RUNS_PER_USER" in body["detail"]
    assert alice.name in body["detail"]
    # nothing of the refused request was kept, and other users have their own budget
    listed = auth_client.get("/experiments", params={"name": name}, headers=alice.headers)
    assert len(listed.json()["items"]) == 1
    assert auth_client.post("/experiments", json=small_spec(name, seeds=[0, 1]),
                            headers=bob.headers).status_code == 201
    # a cancelled experiment's runs no longer count
    auth_client.post(f"/experiments/{first.json()['id']}/cancel", headers=alice.headers)
    assert auth_client.post("/experiments", json=small_spec(name, seeds=[3, 4]),
                            headers=alice.headers).status_code == 201


def test_with_auth_off_every_request_is_the_one_user(client: TestClient) -> None:
    """The embedded default: no token needed, a token sent is ignored."""
    assert client.get("/experiments").status_code == 200
    assert client.get("/experiments", headers={"Authorization": "Bearer x"}).status_code == 200


def test_an_admin_token_from_the_deployment_is_registered_once_at_start(
    auth_settings: ApiSettings, alice: Person,
) -> None:
    # Helm hands the API GRADLAB_ADMIN_TOKEN from a Secret: a first admin without a shell.
    import secrets

    token = "glt_" + secrets.token_urlsafe(32)
    settings = auth_settings.model_copy(update={"admin_token": token})
    for _ in range(2):  # a second replica (or a restart) finds it registered
        with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
            created = client.post("/experiments", json=small_spec(f"alice-{token[-6:]}"),
                                  headers=alice.headers)
            assert created.status_code == 201, created.text
            admin_view = client.get(f"/experiments/{created.json()['id']}",
                                    headers={"Authorization": f"Bearer {token}"})
            assert admin_view.status_code == 200  # the admin sees alice's experiment
    with pytest.raises(ValueError, match="at least 32"):
        ApiSettings(admin_token="short")
