"""Observability as deployed: ``/metrics`` summed over several API worker processes, the
worker's epoch histograms by model family, JSON log lines naming experiment, run and attempt,
and a Grafana dashboard that only asks for metrics the service exposes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gradlab.client import GradlabClient
from tests.support.processes import (
    VENV_BIN,
    ServiceProcess,
    free_port,
    real_data_dir,
    wait_for,
    wait_http_ok,
)
from tests.support.prometheus import samples, value

REDIS_URL = os.environ.get("GRADLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GRADLAB_", "PROMETHEUS_"))}


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_metrics_are_summed_over_several_api_worker_processes(
    module_postgres_url: str, tmp_path: Path
) -> None:
    port, requests = free_port(), 40
    multiproc = tmp_path / "prometheus"
    env = {**_base_env(), "GRADLAB_DATABASE_URL": module_postgres_url,
           "GRADLAB_BROKER_URL": REDIS_URL,
           "GRADLAB_LOG_FORMAT": "json", "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "PYTHONUNBUFFERED": "1"}
    api = ServiceProcess("api-2-workers", [str(VENV_BIN / "gradlab"), "api", "--workers", "2",
                                           "--port", str(port)], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", timeout=90, service=api)
        # both worker processes up: each writes its own files into the shared folder
        wait_for("two API processes", lambda: len({p.stem.rsplit("_", 1)[-1]
                                                   for p in multiproc.glob("*.db")}) >= 2,
                 timeout=60, service=api)
        before = value(httpx.get(f"{url}/metrics").text,
                       "gradlab_http_request_duration_seconds_count",
                       method="GET", route="/healthz", status="200")
        with httpx.Client(base_url=url) as client:
            for _ in range(requests):
                assert client.get("/healthz").status_code == 200
        # whichever process answers the scrape, it reports every process's requests
        for _ in range(6):
            with httpx.Client(base_url=url) as fresh:  # a new connection, maybe another process
                after = value(fresh.get("/metrics").text,
                              "gradlab_http_request_duration_seconds_count",
                              method="GET", route="/healthz", status="200")
            assert after - before == requests
    finally:
        api.stop()
    lines = _json_lines(api.log_tail(200_000))
    served = [line for line in lines if line.get("route") == "/healthz"]
    assert len(served) >= requests
    assert {"time", "level", "logger", "message", "status", "duration_ms"} <= served[0].keys()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, str]]:
    data = real_data_dir()
    if data is None:
        pytest.skip("real CIFAR-100 not available (set GRADLAB_DATA_DIR)")
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**_base_env(), "GRADLAB_DATA_DIR": str(data), "GRADLAB_DEVICE": "cpu",
           "GRADLAB_LOG_FORMAT": "json", "GRADLAB_LEASE_SECONDS": "3",
           "GRADLAB_EVENTS_POLL_SECONDS": "0.2", "PYTHONUNBUFFERED": "1"}
    serve = ServiceProcess("serve", [str(VENV_BIN / "gradlab"), "serve", "--port", str(port),
                                     "--db", str(folder / "gradlab.db")], env, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", timeout=90, service=serve)
        yield serve, url
    finally:
        serve.stop()


@pytest.mark.slow
def test_serve_trains_a_run_and_exposes_epoch_histograms_and_json_logs_with_ids(
    served: tuple[ServiceProcess, str]
) -> None:
    serve, url = served
    spec = {"name": "obs-vgg08", "depth": 8, "width": 8, "batch_norm": True, "seeds": [0],
            "hyperparameters": {"epochs": 2, "batch_size": 50},
            "data": {"train_limit": 200, "val_limit": 100, "test_limit": 100}}
    with GradlabClient(url, token="") as client:
        created = client.submit_experiment(spec)
        events = list(client.events(experiment_id=created.id))  # live over SQLite, until end
        metrics = httpx.get(f"{url}/metrics").text
        client.gradflow(created.id)
    kinds = [e.event for e in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "end"
    assert [e.data["epoch"] for e in events if e.event == "epoch"] == [0, 1]
    assert events[-1].data["runs"] == {created.runs[0].id: "succeeded"}

    family = {"family": "vgg08-bn"}
    assert value(metrics, "gradlab_epoch_duration_seconds_count", **family) == 2
    assert value(metrics, "gradlab_epoch_write_seconds_count", **family) == 2
    assert value(metrics, "gradlab_runs_finished_total", status="succeeded", **family) == 1
    assert value(metrics, "gradlab_runs", status="succeeded") >= 1
    # labels are model families, never run or experiment ids
    assert created.id not in metrics and created.runs[0].id not in metrics

    lines = _json_lines(serve.log_tail(400_000))
    claimed = [line for line in lines if str(line.get("message", "")).startswith("claimed run")]
    assert claimed and claimed[0]["experiment_id"] == created.id
    assert claimed[0]["run_id"] == created.runs[0].id and claimed[0]["attempt"] == 1
    requests = [line for line in lines if line.get("logger") == "gradlab.api.requests"]
    assert any(line.get("experiment_id") == created.id for line in requests)


@pytest.mark.slow
def test_the_grafana_dashboard_asks_only_for_exposed_metrics(
    served: tuple[ServiceProcess, str]
) -> None:
    _, url = served
    exposed = {name for name, _ in samples(httpx.get(f"{url}/metrics").text)}
    exposed |= {re.sub(r"_(bucket|count|sum)$", "", n) for n in exposed}
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {re.sub(r"_(bucket|count|sum)$", "", m)
              for e in exprs for m in re.findall(r"gradlab_[a-z_]+", e)}
    # series that only exist while something happens (a worker holds a lease right now,
    # a dispatch failed) are declared in the exposition's HELP lines all the same
    declared = set(re.findall(r"^# HELP (gradlab_[a-z_]+)", httpx.get(f"{url}/metrics").text,
                              re.MULTILINE))
    missing = wanted - exposed - declared - {n.removesuffix("_total") for n in declared}
    assert not missing, f"the dashboard asks for metrics nobody exposes: {sorted(missing)}"


def test_a_celery_worker_serves_its_metrics_on_its_port(
    module_postgres_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**_base_env(), "GRADLAB_DATABASE_URL": module_postgres_url,
           "GRADLAB_BROKER_URL": REDIS_URL,
           "GRADLAB_CELERY_QUEUE": f"gradlab-test-{tmp_path.name[-8:]}-{port}",
           "GRADLAB_WORKER_METRICS_PORT": str(port), "GRADLAB_LOG_FORMAT": "json",
           "GRADLAB_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    worker = ServiceProcess("celery-worker", [str(VENV_BIN / "gradlab"), "worker",
                                              "--concurrency", "1"], env, tmp_path)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/metrics", timeout=90, service=worker)
        wait_for("the worker to be ready", lambda: "ready" in worker.log_tail(20_000),
                 timeout=90, service=worker)
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scrape.headers["content-type"].startswith("text/plain")
    finally:
        worker.stop()
    lines = _json_lines(worker.log_tail(50_000))
    assert any(line.get("logger", "").startswith("celery") for line in lines)
