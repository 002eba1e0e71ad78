"""Every input bounded and every bad input a clear 4xx: non-finite numbers, text PostgreSQL
cannot store, integers past its INTEGER columns, malformed cursors, oversized bodies, specs
past the cost limits, oversized studies, unsafe name templates. Real app on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
from tests.api.conftest import RecordingDispatcher, small_spec

INT32_MAX = 2**31 - 1


def _errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "validation_error"
    return {e["field"]: e["reason"] for e in body["errors"]}


def _post_raw(client: TestClient, path: str, text: str) -> httpx.Response:
    return client.post(path, content=text.encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_field(
    client: TestClient, unique_name: str, literal: str
) -> None:
    body = json.dumps(small_spec(unique_name)).replace('"epochs": 1', f'"epochs": 1, '
                                                      f'"learning_rate": {literal}')
    errors = _errors(_post_raw(client, "/experiments", body))
    assert "finite" in errors["hyperparameters.learning_rate"]


def test_non_finite_values_anywhere_in_a_study_are_refused(client: TestClient) -> None:
    study = {"name": "nan-study", "grid": {"hyperparameters.weight_decay": ["__NAN__"]}}
    text = json.dumps(study).replace('"__NAN__"', "NaN")
    errors = _errors(_post_raw(client, "/studies", text))
    assert any("finite" in reason for reason in errors.values()), errors


@pytest.mark.parametrize("betas", [[1.0, 0.999], [0.9, 1.0], [-0.1, 0.999]])
def test_adam_betas_must_be_in_zero_one(
    client: TestClient, unique_name: str, betas: list[float]
) -> None:
    spec = small_spec(unique_name, hyperparameters={"adam_betas": betas})
    errors = _errors(client.post("/experiments", json=spec))
    assert any(field.startswith("hyperparameters.adam_betas") for field in errors), errors


BOOLEANS_AS_NUMBERS = {
    "width": {"width": True},
    "seeds.0": {"seeds": [True]},
    "hyperparameters.learning_rate": {"hyperparameters": {"learning_rate": True}},
    "hyperparameters.epochs": {"hyperparameters": {"epochs": False}},
    "data.train_limit": {"data": {"train_limit": True}},
}


@pytest.mark.parametrize(("field", "changes"), BOOLEANS_AS_NUMBERS.items(),
                         ids=BOOLEANS_AS_NUMBERS.keys())
def test_true_or_false_is_not_a_number(
    client: TestClient, unique_name: str, field: str, changes: dict[str, object]
) -> None:
    response = client.post("/experiments", json=small_spec(unique_name, **changes))
    errors = _errors(response)
    assert field in errors, errors
    assert "not true or false" in response.text


NUMBERS_AS_FLAGS = {"batch_norm": {"batch_norm": 0.0}, "residual": {"residual": 1},
                    "data.augment": {"data": {"augment": "no"}}}


@pytest.mark.parametrize(("field", "changes"), NUMBERS_AS_FLAGS.items(),
                         ids=NUMBERS_AS_FLAGS.keys())
def test_a_flag_is_true_or_false_not_a_number_or_word(
    client: TestClient, unique_name: str, field: str, changes: dict[str, object]
) -> None:
    errors = _errors(client.post("/experiments", json=small_spec(unique_name, **changes)))
    assert field in errors, errors


def test_a_study_base_refuses_a_number_as_a_flag(client: TestClient, unique_name: str) -> None:
    """What the fuzz test found: a study's base with batch_norm 0.0 was created (201)."""
    response = client.post("/studies", json={"name": unique_name, "base": {"batch_norm": 0.0}})
    assert response.status_code == 422, response.text
    assert "batch_norm" in response.text


def test_depth_has_an_upper_bound_and_the_deepest_model_is_accepted(
    client: TestClient, unique_name: str
) -> None:
    assert "depth" in _errors(client.post("/experiments", json=small_spec(unique_name,
                                                                          depth=614)))
    assert client.post("/experiments", json=small_spec(unique_name, depth=200)).status_code == 201


def test_seeds_must_fit_the_database_integer_column(client: TestClient, unique_name: str) -> None:
    errors = _errors(client.post("/experiments", json=small_spec(unique_name, seeds=[2**31])))
    assert "seeds.0" in errors
    accepted = client.post("/experiments", json=small_spec(unique_name, seeds=[INT32_MAX]))
    assert accepted.status_code == 201
    run_id = accepted.json()["runs"][0]["id"]
    assert run_id and accepted.json()["runs"][0]["seed"] == INT32_MAX


@pytest.mark.parametrize("text", ["nul\\u0000name", "lone \\ud800 surrogate"])
def test_text_postgresql_cannot_store_is_refused_in_bodies(client: TestClient, text: str) -> None:
    body = json.dumps(small_spec("x")).replace('"name": "x"', f'"name": "{text}"')
    assert "name" in _errors(_post_raw(client, "/experiments", body))
    study = json.dumps({"name": "s", "description": "d"}).replace('"d"', f'"{text}"')
    assert "description" in _errors(_post_raw(client, "/studies", study))


@pytest.mark.parametrize("url", [
    "/experiments/abc%00def",
    "/experiments/abc%00def/metrics",
    "/studies/%00",
    "/experiments?name=a%00b",
    "/experiments?cursor=%00",
    "/experiments/x/gradflow?stat=mean_abs%00",
])
def test_nul_in_paths_and_queries_is_422(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MALFORMED_CURSORS = [
    "not base64 !!", "", "====", _b64(b"\xff\xfe"), _b64(b"null"), _b64(b"[]"),
    _b64(b'"2026-01-01T00:00:00+00:00"'), _b64(b"[1, 2]"), _b64(b'{"a": 1, "b": 2}'),
    _b64(b'["2026-01-01T00:00:00+00:00"]'),
    _b64(b'["2026-01-01T00:00:00+00:00", "4b0c5f7e-9a0d-4b7e-8d7e-2f1f6f3a9c11", 3]'),
    _b64(b'["2026-01-01T00:00:00", "4b0c5f7e-9a0d-4b7e-8d7e-2f1f6f3a9c11"]'),  # no zone
    _b64(b'["not a time", "4b0c5f7e-9a0d-4b7e-8d7e-2f1f6f3a9c11"]'),
    _b64(b'["2026-01-01T00:00:00+00:00", "not-a-uuid"]'),
    _b64(b'["2026-01-01T00:00:00+00:00", "4b0c5f7e\\u0000"]'),
    _b64(b'["99999-01-01T00:00:00+00:00", "4b0c5f7e-9a0d-4b7e-8d7e-2f1f6f3a9c11"]'),
    _b64(b"[" * 200 + b"]" * 200),
    "A" * 300,
    "caf\u00e9",
]


@pytest.mark.parametrize("cursor", MALFORMED_CURSORS)
def test_malformed_cursors_of_any_shape_are_422(client: TestClient, cursor: str) -> None:
    errors = _errors(client.get("/experiments", params={"cursor": cursor}))
    assert "cursor" in errors


@pytest.mark.parametrize("query", [
    {"epoch_from": 2**31}, {"epoch_to": 2**40}, {"seed": 2**31}, {"seed": -1},
])
def test_integers_in_queries_stay_within_the_database_range(
    client: TestClient, query: dict[str, int]
) -> None:
    assert _errors(client.get("/experiments/x/gradflow", params=query))


@pytest.fixture
def limited_client(settings: ApiSettings) -> Iterator[TestClient]:
    tight = settings.model_copy(update={"max_request_bytes": 4096, "max_study_cells": 50,
                                        "max_study_runs": 60})
    with TestClient(create_app(tight, dispatcher=RecordingDispatcher())) as client:
        yield client


def test_a_body_over_the_limit_is_413(limited_client: TestClient) -> None:
    big = {"name": "big", "description": "x" * 5000}
    response = limited_client.post("/studies", json=big)
    assert response.status_code == 413
    assert "GRADLAB_MAX_REQUEST_BYTES" in response.json()["detail"]
    # also when the client does not say how long the body is (chunked)
    chunks = iter([b'{"name": "big", "description": "', b"x" * 5000, b'"}'])
    response = limited_client.post("/studies", content=chunks,
                                   headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_spec_past_the_cost_limits_is_422_saying_which_and_by_how_much(
    client: TestClient, unique_name: str
) -> None:
    spec = small_spec(unique_name, width=1024, hyperparameters={"batch_size": 8192})
    errors = _errors(client.post("/experiments", json=spec))
    assert set(errors) == {"cost.parameters", "cost.activation_memory", "cost.checkpoint_size"}
    assert "GRADLAB_MAX_CHECKPOINT_BYTES" in errors["cost.checkpoint_size"]
    assert "over the limit of 512.0 MiB" in errors["cost.checkpoint_size"]
    assert "activation memory at batch size 8192" in errors["cost.activation_memory"]


def test_a_study_cell_past_the_cost_limits_is_named(client: TestClient) -> None:
    study = {"name": f"cost-{uuid.uuid4().hex[:6]}",
             "base": {"name": "c", "depth": 8, "hyperparameters": {"epochs": 1}},
             "grid": {"width": [8, 1024]}}
    errors = _errors(client.post("/studies", json=study))
    assert any(field.startswith("cells[1] (c-width1024).cost.") for field in errors), errors


def test_study_grids_are_capped_before_expansion(limited_client: TestClient) -> None:
    # 10^12 cells: refused by counting, never expanded
    huge = {"name": "huge", "grid": {
        "hyperparameters.learning_rate": [round(0.001 * (i + 1), 6) for i in range(100)],
        "hyperparameters.weight_decay": [round(0.001 * i, 6) for i in range(100)],
        "hyperparameters.batch_size": list(range(1, 101)),
        "hyperparameters.epochs": list(range(1, 101)),
        "data.train_limit": list(range(1, 101)),
        "data.val_limit": list(range(1, 101)),
    }}
    reason = _errors(limited_client.post("/studies", json=huge))["grid"]
    assert "1000000000000 cells" in reason and "GRADLAB_MAX_STUDY_CELLS" in reason
    too_many_runs = {"name": "runs", "grid": {"width": list(range(1, 11))},
                     "seeds": list(range(7))}
    reason = _errors(limited_client.post("/studies", json=too_many_runs))["grid"]
    assert "70 runs" in reason and "GRADLAB_MAX_STUDY_RUNS" in reason
    too_many_values = {"name": "values", "grid": {"width": list(range(1, 1003))}}
    assert _errors(limited_client.post("/studies", json=too_many_values))


@pytest.mark.parametrize("template", [
    "{depth.__class__}", "{depth[0]}", "{0}", "{}", "{depth!r}", "{depth:>1000000}",
    "{depth:{width}}", "{missing}",
])
def test_name_templates_substitute_field_values_only(client: TestClient, template: str) -> None:
    study = {"name": f"t-{uuid.uuid4().hex[:6]}", "grid": {"depth": [8], "width": [8]},
             "name_template": template, "base": {"hyperparameters": {"epochs": 1}}}
    assert _errors(client.post("/studies", json=study))


def test_study_expansion_never_runs_on_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradlab.science import study as science_study
    from gradlab.services import studies as service
    from gradlab.store import studies as store

    on_loop: list[bool] = []
    real = science_study.expand

    def recording_expand(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(*args, **kwargs)

    for module in (service, store, science_study):
        monkeypatch.setattr(module, "expand", recording_expand)
    study = {"name": f"loop-{uuid.uuid4().hex[:6]}", "grid": {"depth": [8, 14]},
             "base": {"width": 8, "hyperparameters": {"epochs": 1}}}
    assert client.post("/studies", json=study).status_code == 201
    assert on_loop and not any(on_loop)


def test_the_deepest_model_renders_every_view(
    client: TestClient, postgres_session_factory: Any, unique_name: str
) -> None:
    from gradlab.science.layers import layer_names
    from gradlab.science.report import build_report, render_html
    from gradlab.science.spec import MAX_DEPTH, ExperimentSpec
    from tests.api.synthetic_rows import insert_experiment
    from tests.study.builders import cell, seed_run

    spec = ExperimentSpec.model_validate(small_spec(unique_name, depth=MAX_DEPTH, batch_norm=True))
    layers = layer_names(spec)
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layers, epochs=3)
    for path in ("", "/metrics", "/gradflow", "/gradflow?format=csv",
                 "/gradflow?format=png&log_scale=true"):
        response = client.get(f"/experiments/{experiment_id}{path}")
        assert response.status_code == 200, (path, response.text[:200])
    flow = [[1e-3 * (j + 1) for j in range(len(layers))]] * 3
    deepest = cell(spec, seed_run(0, train_loss=[4.0, 3.9, 3.8], gradients=flow, layers=layers))
    assert "<img" in render_html(build_report("deep", [deepest], scale="full"))
