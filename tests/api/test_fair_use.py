"""No user can hurt another, and every limit holds on every path (issue 21), through the real
app on PostgreSQL: limits met before anything is written (a grid over seeds, reuse past 64
seeds, resubmit and the run cap), resubmit sends nothing already queued, views cached on what
they depend on (a seed added, a resubmit) and on the parameters that change the picture,
renders bounded per user, hostile Last-Event-ID values, admin granted and revoked per token.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.app import create_app
from gradlab.science.layers import layer_names
from gradlab.science.spec import MAX_SEEDS, ExperimentSpec
from gradlab.settings import ApiSettings
from gradlab.store.models import Experiment, Run, Study
from gradlab.store.session import session_scope
from gradlab.store.users import create_token, revoke_admin
from tests.api.conftest import RecordingDispatcher, small_spec
from tests.api.synthetic_rows import insert_experiment


def _study(tag: str, **changes: object) -> dict[str, object]:
    study: dict[str, object] = {
        "name": f"fair-{tag}",
        "base": {"name": f"fair-{tag}", "depth": 8, "width": 8,
                 "hyperparameters": {"epochs": 1}, "data": {"train_limit": 200}},
        "grid": {"batch_norm": [False, True]},
        "seeds": [0, 1],
    }
    study.update(changes)
    return study


def _count(factory: sessionmaker[Session], model: type, name: str) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)
                                  .where(model.name.like(f"{name}%"))) or 0)


def _fail_runs(factory: sessionmaker[Session], run_ids: list[str]) -> None:
    with session_scope(factory) as session:
        session.execute(update(Run).where(Run.id.in_(run_ids)).values(status="failed"))


def test_a_grid_over_seeds_counts_its_real_runs_before_anything_is_written(
    settings: ApiSettings, postgres_session_factory: sessionmaker[Session]
) -> None:
    tag = uuid.uuid4().hex[:8]
    capped = settings.model_copy(update={"max_study_runs": 100})
    # 2 cells, but 64 seeds each: 128 runs, not 2
    study = _study(tag, grid={"seeds": [list(range(64)), list(range(64, 128))]})
    study.pop("seeds")
    with TestClient(create_app(capped, dispatcher=RecordingDispatcher())) as client:
        response = client.post("/studies", json=study)
    assert response.status_code == 422, response.text
    assert "128 runs" in response.text and "GRADLAB_MAX_STUDY_RUNS" in response.text
    assert _count(postgres_session_factory, Study, f"fair-{tag}") == 0
    assert _count(postgres_session_factory, Experiment, f"fair-{tag}") == 0


def test_reuse_cannot_push_an_experiment_past_64_seeds(
    client: TestClient, postgres_session_factory: sessionmaker[Session]
) -> None:
    tag = uuid.uuid4().hex[:8]
    base = {"name": f"fair-{tag}", "depth": 8, "width": 8,
            "hyperparameters": {"epochs": 1}, "data": {"train_limit": 200}}
    first = client.post("/experiments", json={**base, "seeds": list(range(40))})
    assert first.status_code == 201, first.text
    # the same configuration as a study cell, with 40 other seeds: 80 > 64
    study = {"name": f"fair-{tag}-study", "base": base, "seeds": list(range(40, 80))}
    response = client.post("/studies", json=study)
    assert response.status_code == 422, response.text
    assert f"past the limit of {MAX_SEEDS} seeds" in response.text
    assert first.json()["id"] in response.text
    runs = client.get(f"/experiments/{first.json()['id']}").json()["runs"]
    assert len(runs) == 40  # nothing was added
    assert _count(postgres_session_factory, Study, f"fair-{tag}-study") == 0
    # within the limit, reuse still adds the missing seeds
    fits = {**study, "seeds": list(range(40, 64))}
    assert client.post("/studies", json=fits).status_code == 201
    assert len(client.get(f"/experiments/{first.json()['id']}").json()["runs"]) == 64


def test_resubmit_sends_only_the_requeued_runs_and_meets_the_run_cap(
    settings: ApiSettings, postgres_session_factory: sessionmaker[Session]
) -> None:
    tag = uuid.uuid4().hex[:8]
    capped = settings.model_copy(update={"auth_required": True, "max_active_runs_per_user": 5})
    with session_scope(postgres_session_factory) as session:
        issued = create_token(session, f"fair-{tag}")
    headers = {"Authorization": f"Bearer {issued.token}"}
    dispatcher = RecordingDispatcher()
    with TestClient(create_app(capped, dispatcher=dispatcher)) as client:
        created = client.post("/studies", json=_study(tag), headers=headers).json()
        study_id = created["id"]
        cells = client.get(f"/studies/{study_id}", headers=headers).json()["cells"]
        runs = [s["run_id"] for c in cells for s in c["seeds"]]
        _fail_runs(postgres_session_factory, runs[:1])
        dispatcher.dispatched.clear()

        again = client.post(f"/studies/{study_id}/resubmit", headers=headers)
        assert again.status_code == 200 and again.json()["runs_queued"] == 1
        # the failed run only: the three still queued were sent when submitted
        assert dispatcher.dispatched == runs[:1]
        assert client.post(f"/studies/{study_id}/resubmit", headers=headers
                           ).json()["runs_queued"] == 0
        assert dispatcher.dispatched == runs[:1]

        # 3 active (one more failed) + 2 more = the cap of 5; the failed run would be the 6th
        _fail_runs(postgres_session_factory, runs[1:2])
        assert client.post("/experiments", json=small_spec(f"fair-{tag}-x", seeds=[0, 1]),
                           headers=headers).status_code == 201
        refused = client.post(f"/studies/{study_id}/resubmit", headers=headers)
        assert refused.status_code == 429, refused.text
        assert "GRADLAB_MAX_ACTIVE_RUNS_PER_USER" in refused.json()["detail"]
    with postgres_session_factory() as session:
        assert session.scalar(select(Run.status).where(Run.id == runs[1])) == "failed"


def test_views_of_a_finished_experiment_show_a_seed_a_study_adds_and_a_resubmit(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    base = small_spec(unique_name, seeds=[0])
    spec = ExperimentSpec.model_validate(base)
    experiment_id, run_ids = insert_experiment(postgres_session_factory, spec,
                                               layer_names(spec), epochs=2)
    views = [f"/experiments/{experiment_id}/{view}" for view in
             ("metrics", "gradflow", "gradflow?format=csv", "diagnostics")]
    for path in views:  # finished: cached
        assert client.get(path).status_code == 200
    study = {"name": f"{unique_name}-study", "base": {**base, "seeds": [0, 5]}}
    assert client.post("/studies", json=study).json()["reused_experiment_ids"] == [experiment_id]
    metrics = client.get(views[0]).json()
    assert [r["seed"] for r in metrics["runs"]] == [0, 5]
    assert [r["seed"] for r in client.get(views[1]).json()["runs"]] == [0, 5]

    _fail_runs(postgres_session_factory, [run_ids[0]])
    study_id = client.get("/studies", params={"limit": 500}).json()
    study_id = next(s["id"] for s in study_id if s["name"] == f"{unique_name}-study")
    assert client.get(views[0]).json()["runs"][0]["status"] == "failed"
    assert client.post(f"/studies/{study_id}/resubmit").json()["runs_queued"] == 1
    assert client.get(views[0]).json()["runs"][0]["status"] == "queued"


def test_views_are_cached_on_what_changes_the_picture_not_on_any_integer_sent(
    client: TestClient, postgres_session_factory: sessionmaker[Session], unique_name: str
) -> None:
    spec = ExperimentSpec.model_validate(small_spec(unique_name, seeds=[0, 1]))
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layer_names(spec),
                                         epochs=3)
    cache = client.app.state.response_cache  # type: ignore[attr-defined]
    path = f"/experiments/{experiment_id}/gradflow"
    first = client.get(path, params={"format": "png", "epoch_to": 2})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    entries, hits = len(cache), cache.hits
    for epoch_to in (3, 1000, 2_000_000_000):  # past the last epoch: the same picture
        again = client.get(path, params={"format": "png", "epoch_to": epoch_to})
        assert again.content == first.content
    beyond = [client.get(path, params={"epoch_from": n}).json() for n in (3, 50, 10**9)]
    assert all(b["runs"][0]["epochs"] == [] for b in beyond) and beyond[0] == beyond[2]
    metrics = [client.get(f"/experiments/{experiment_id}/metrics",
                          params={"max_points": n}).json() for n in (3, 99, 10**9)]
    assert metrics[0] == metrics[1] == metrics[2] and metrics[0]["max_points"] is None
    assert len(cache) == entries + 2  # one empty window, one unsampled metrics view
    assert cache.hits >= hits + 3 + 2 + 2
    shorter = client.get(path, params={"format": "png", "epoch_to": 1})
    assert shorter.content != first.content  # a window that shows less is another picture


@pytest.fixture
def render_settings(settings: ApiSettings) -> ApiSettings:
    return settings.model_copy(update={
        "auth_required": True, "render_concurrency_per_user": 1, "render_backlog_per_user": 1})


@pytest.fixture
def render_client(render_settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(render_settings, dispatcher=RecordingDispatcher())) as client:
        yield client


def _user(factory: sessionmaker[Session], *, admin: bool = False,
          name: str | None = None) -> tuple[dict[str, str], str]:
    name = name or f"u-{uuid.uuid4().hex[:8]}"
    with session_scope(factory) as session:
        issued = create_token(session, name, admin=admin)
    return {"Authorization": f"Bearer {issued.token}"}, issued.token_id


def _wait_until(what: str, check: object, deadline_seconds: float = 60.0) -> None:
    event = threading.Event()
    for _ in range(int(deadline_seconds * 100)):
        if check():  # type: ignore[operator]
            return
        event.wait(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def test_renders_are_bounded_per_user_and_never_hold_up_another_user(
    render_client: TestClient, postgres_session_factory: sessionmaker[Session],
    unique_name: str,
) -> None:
    from gradlab.api import gradflow_views

    alice, _ = _user(postgres_session_factory)
    bob, _ = _user(postgres_session_factory)
    owner = render_client.get("/experiments", headers=alice)  # alice exists; find her id
    assert owner.status_code == 200
    with postgres_session_factory() as session:
        from gradlab.store.users import viewer_for_token

        viewer = viewer_for_token(session, alice["Authorization"][7:])
    assert viewer is not None
    spec = ExperimentSpec.model_validate(small_spec(unique_name, seeds=[0]))
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layer_names(spec),
                                         epochs=3, owner_id=viewer.user_id)
    limiter = render_client.app.state.render_limiter  # type: ignore[attr-defined]
    path = f"/experiments/{experiment_id}/gradflow"

    def png(epoch_to: int) -> int:
        params = {"format": "png", "epoch_to": epoch_to}
        return render_client.get(path, params=params, headers=alice).status_code

    with ThreadPoolExecutor(4) as pool, gradflow_views._PLOT_LOCK:
        # the plot lock held here: alice's first render blocks inside it, her second waits
        first = pool.submit(png, 0)
        _wait_until("alice's first render", lambda: limiter.in_flight(viewer.user_id) == 1)
        second = pool.submit(png, 1)
        _wait_until("alice's second render to wait", lambda: limiter.in_flight(viewer.user_id) == 2)
        third = png(2)  # one running, one waiting: the most she may have
        assert third == 429
        refused = render_client.get(path, params={"format": "png", "epoch_to": 2}, headers=alice)
        assert refused.headers["retry-after"] == "1"
        assert "GRADLAB_RENDER_CONCURRENCY_PER_USER" in refused.json()["detail"]
        # bob is not held up by alice's renders
        listed = render_client.get("/experiments", params={"limit": 1}, headers=bob)
        assert listed.status_code == 200
    assert first.result() == 200 and second.result() == 200
    assert limiter.in_flight(viewer.user_id) == 0


@pytest.mark.parametrize("hostile", ["99999999999999999999", "\u00b2", "\u0661\u0662\u0663",
                                     "-1", "1e5", "12345678901234567890123"])
def test_hostile_last_event_ids_are_422_after_the_ownership_check(
    render_client: TestClient, postgres_session_factory: sessionmaker[Session],
    unique_name: str, hostile: str,
) -> None:
    alice, _ = _user(postgres_session_factory)
    bob, _ = _user(postgres_session_factory)
    created = render_client.post("/experiments", json=small_spec(unique_name), headers=alice)
    events = f"/experiments/{created.json()['id']}/events"
    as_query = {"last_event_id": hostile}
    as_header = {"Last-Event-ID": hostile.encode("utf-8")}
    for who, expected in ((bob, 404), (alice, 422)):  # ownership first, then the header
        with render_client.stream("GET", events, params=as_query, headers=who) as response:
            assert response.status_code == expected, hostile
        with render_client.stream("GET", events, headers={**who, **as_header}) as response:
            assert response.status_code == expected, hostile
    response = render_client.get(events, params=as_query, headers=alice)
    assert "Last-Event-ID" in response.json()["detail"]


def test_admin_is_a_grant_of_one_token_and_can_be_revoked(
    render_client: TestClient, postgres_session_factory: sessionmaker[Session],
    unique_name: str,
) -> None:
    alice, _ = _user(postgres_session_factory)
    name = f"x-{uuid.uuid4().hex[:8]}"
    plain, _ = _user(postgres_session_factory, name=name)
    admin, admin_token_id = _user(postgres_session_factory, name=name, admin=True)
    created = render_client.post("/experiments", json=small_spec(unique_name), headers=alice)
    path = f"/experiments/{created.json()['id']}"
    assert render_client.get(path, headers=admin).status_code == 200
    # the admin token did not make the same user's other token an admin
    assert render_client.get(path, headers=plain).status_code == 404
    with session_scope(postgres_session_factory) as session:
        assert [i.is_admin for i in revoke_admin(session, admin_token_id)] == [False]
    assert render_client.get(path, headers=admin).status_code == 404
    assert render_client.get("/experiments", headers=admin).status_code == 200  # still valid
