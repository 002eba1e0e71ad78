"""/healthz, /readyz (database and broker reachable) and /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
from tests.api.conftest import RecordingDispatcher, small_spec
from tests.support.prometheus import value

REDIS_URL = "redis://127.0.0.1:6379/15"
CLOSED_PORT = 1


def _ready(settings: ApiSettings) -> tuple[int, dict]:
    with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
        response = client.get("/readyz")
    return response.status_code, response.json()


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_ready_in_embedded_mode_without_a_broker(settings: ApiSettings) -> None:
    status, body = _ready(settings)
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "not used (embedded mode)"},
    }


def test_ready_with_a_reachable_redis_broker(settings: ApiSettings) -> None:
    status, body = _ready(settings.model_copy(update={"broker_url": REDIS_URL}))
    assert status == 200 and body["checks"]["broker"] == "ok"


def test_not_ready_when_the_broker_is_unreachable(settings: ApiSettings) -> None:
    broken = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{CLOSED_PORT}/0"})
    status, body = _ready(broken)
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"] == {"database": "ok", "broker": "unreachable"}
    assert "127.0.0.1" not in str(body)


def test_not_ready_when_the_database_is_unreachable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/gradlab"
    status, body = _ready(ApiSettings(database_url=url, broker_url=None))
    assert status == 503
    # what is down, without where it is: no host, port, user or database name
    assert body["checks"]["database"] == "unreachable"
    assert not {"127.0.0.1", "postgres", "gradlab", str(CLOSED_PORT) + "/"} & set(str(body).split())


def test_a_request_while_the_database_is_down_is_a_503_not_a_traceback() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{CLOSED_PORT}/gradlab"
    app = create_app(ApiSettings(database_url=url, broker_url=None),
                     dispatcher=RecordingDispatcher())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/experiments", json=small_spec("down"))
    assert response.status_code == 503
    assert response.json() == {"type": "service_unavailable", "detail": "database unavailable"}


def test_metrics_exposes_run_gauges_and_request_latency_by_route_template(
    client: TestClient, unique_name: str
) -> None:
    created = ("gradlab_http_request_duration_seconds_count", "POST", "/experiments", "201")
    missing = ("gradlab_http_request_duration_seconds_count", "GET", "/experiments/{experiment_id}",
               "404")

    def count(text: str, key: tuple[str, str, str, str]) -> float:
        return value(text, key[0], method=key[1], route=key[2], status=key[3])

    before = client.get("/metrics").text
    client.post("/experiments", json=small_spec(unique_name, seeds=[0, 1, 2]))
    client.get("/experiments/missing")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    after = response.text
    assert value(after, "gradlab_runs", status="queued") >= 3
    assert value(after, "gradlab_queue_depth") >= 3
    assert count(after, created) - count(before, created) == 1
    assert count(after, missing) - count(before, missing) == 1
    # the raw path never becomes a label
    assert "/experiments/missing" not in after
    assert "# TYPE gradlab_runs gauge" in after.splitlines()


def test_openapi_examples_name_real_layers(client: TestClient) -> None:
    # The documented gradient-flow example must use the model's own layer names.
    from gradlab.science.layers import layer_names
    from gradlab.science.spec import ExperimentSpec

    schema = client.get("/openapi.json").json()["components"]["schemas"]["GradflowRead"]
    real = set(layer_names(ExperimentSpec(depth=38, batch_norm=True)))
    for example in schema["examples"]:
        assert set(example["layers"]) <= real, example["layers"]
