"""``/studies`` over HTTP on PostgreSQL: submit (with reuse), completion matrix, report."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.study.conftest import RecordingDispatcher


def _study(tag: str, **extra: object) -> dict:
    return {
        "name": f"api-{tag}",
        "base": {"name": f"api-{tag}", "width": 8, "hyperparameters": {"epochs": 1}},
        "grid": {"depth": [8, 14], "batch_norm": [False, True]},
        "name_template": f"{tag}-{{depth}}{{batch_norm:-bn}}",
        "seeds": [0, 1],
        "scale": "smoke",
        **extra,
    }


def test_post_expands_the_grid_and_dispatches_every_run(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    tag = uuid.uuid4().hex[:8]
    response = client.post("/studies", json=_study(tag))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] and body["cells"] == 4 and body["runs_queued"] == 8
    assert len(dispatcher.dispatched) == 8

    matrix = client.get(f"/studies/{body['id']}").json()
    assert matrix["runs_planned"] == 8 and matrix["runs_finished"] == 0
    assert [c["name"] for c in matrix["cells"]] == [
        f"{tag}-8",
        f"{tag}-8-bn",
        f"{tag}-14",
        f"{tag}-14-bn",
    ]
    first = matrix["cells"][0]
    assert first["coordinates"] == {"depth": 8, "batch_norm": False}
    assert [(s["seed"], s["status"], s["epochs_done"]) for s in first["seeds"]] == [
        (0, "queued", 0),
        (1, "queued", 0),
    ]
    # each cell is a normal experiment, readable through /experiments
    experiment = client.get(f"/experiments/{first['experiment_id']}").json()
    assert experiment["spec"]["depth"] == 8 and experiment["spec"]["data"]["train_limit"] > 0


def test_resubmitting_and_overlapping_studies_reuse_cells(client: TestClient) -> None:
    tag = uuid.uuid4().hex[:8]
    first = client.post("/studies", json=_study(tag)).json()
    again = client.post("/studies", json=_study(tag)).json()
    assert again["id"] == first["id"] and not again["created"]
    # a different study sharing two cells (depth 8) reuses their experiments
    other = _study(
        tag,
        name=f"api-{tag}-other",
        grid={"depth": [8], "batch_norm": [False, True]},
        seeds=[0, 1, 2],
    )
    created = client.post("/studies", json=other).json()
    assert created["created"] and len(created["reused_experiment_ids"]) == 2
    # still-queued runs of the reused cells are not sent again: only the new seed-2 runs
    assert created["runs_queued"] == 2
    first_cells = client.get(f"/studies/{first['id']}").json()["cells"]
    other_cells = client.get(f"/studies/{created['id']}").json()["cells"]
    assert [c["experiment_id"] for c in other_cells] == [
        c["experiment_id"] for c in first_cells[:2]
    ]
    runs = client.get(f"/experiments/{other_cells[0]['experiment_id']}").json()["runs"]
    assert sorted(r["seed"] for r in runs) == [0, 1, 2]  # only seed 2 was added


def test_report_of_a_study_not_started_yet(client: TestClient) -> None:
    tag = uuid.uuid4().hex[:8]
    study_id = client.post("/studies", json=_study(tag)).json()["id"]
    report = client.get(f"/studies/{study_id}/report").json()
    assert report["id"] == study_id and report["complete"] is False
    assert report["findings"] == [] and len(report["table"]) == 4
    assert {c["status"] for c in report["completion"]} == {"queued"}
    page = client.get(f"/studies/{study_id}/report", params={"format": "html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Partial results" in page.text


def test_report_is_cached_until_a_run_moves(client: TestClient) -> None:
    tag = uuid.uuid4().hex[:8]
    study_id = client.post("/studies", json=_study(tag)).json()["id"]
    cache = client.app.state.response_cache  # type: ignore[attr-defined]
    first = client.get(f"/studies/{study_id}/report").json()
    hits = cache.hits
    assert client.get(f"/studies/{study_id}/report").json() == first
    assert cache.hits == hits + 1

    # a run that moves (here: cancelled) gives a new report, not the cached one
    experiment_id = client.get(f"/studies/{study_id}").json()["cells"][0]["experiment_id"]
    assert client.post(f"/experiments/{experiment_id}/cancel").status_code == 200
    after = client.get(f"/studies/{study_id}/report").json()
    assert {c["status"] for c in after["completion"]} == {"queued", "cancelled"}
    assert after != first


def test_bad_study_and_unknown_id_get_clear_errors(client: TestClient) -> None:
    bad = client.post("/studies", json=_study("x", grid={"depth": [37], "batch_norm": [False]}))
    assert bad.status_code == 422
    assert "depth must be 6k+2 for 3 stages; nearest: 32 or 38" in bad.text
    typo = client.post("/studies", json=_study("y", grid={"dept": [8], "batch_norm": [False]}))
    assert typo.status_code == 422 and "has no field 'dept'" in typo.text
    assert client.get("/studies/nope").status_code == 404
    assert client.get("/studies/nope/report").status_code == 404
    fmt = client.get("/studies/nope/report", params={"format": "pdf"})
    assert fmt.status_code == 422
