"""The deployment with real containers: the four images built here (or reused by the content
hash of their inputs), docker-compose.yml brought up with the CPU worker, a run trained by the
worker container and finished after that container is restarted mid-run, its gradient flow
read; then the Helm chart's rendered api, worker, reaper and migration containers run with
`docker run` against the same PostgreSQL and Redis and train a run too.

Skipped only when Docker cannot run at all. The first build on a machine takes minutes (the
worker image holds PyTorch for CUDA); later runs reuse the images. Every request goes to
127.0.0.1.
"""

from __future__ import annotations

import math
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy import chart
from tests.deploy.docker_stack import (
    ComposeStack,
    admin_token,
    api_client,
    build_images,
    docker,
    docker_run_argv,
    docker_unavailable,
)
from tests.support.processes import free_port, real_data_dir, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

FINISHED = {"succeeded", "failed", "diverged", "cancelled"}
SLICE = {"train_limit": 1000, "val_limit": 200, "test_limit": 200}


def spec(name: str, epochs: int) -> dict[str, Any]:
    return {"name": name, "depth": 8, "batch_norm": True, "residual": False,
            "hyperparameters": {"epochs": epochs}, "data": dict(SLICE), "seeds": [0]}


@pytest.fixture(scope="session")
def images() -> dict[str, Any]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"Docker cannot run here: {reason}")
    return build_images()


@pytest.fixture(scope="session")
def image_names(images: dict[str, Any]) -> dict[str, str]:
    return {entry["target"]: entry["image"] for entry in images["images"]}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    found = real_data_dir()
    if found is None:
        pytest.skip("real CIFAR-100 not available (set GRADLAB_DATA_DIR)")
    return found


@pytest.fixture(scope="module")
def stack(image_names: dict[str, str], data_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """docker-compose up with the CPU worker, from .env.example plus this test's values."""
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    variables = {
        **env_example(),
        "POSTGRES_PASSWORD": secrets.token_hex(12),
        "GRADLAB_API_PORT": str(free_port()),
        "GRADLAB_API_WORKERS": "1",
        "GRADLAB_HOST_DATA_DIR": str(data_dir),
        "GRADLAB_ENV_FILE": str(env_file),
        # Short leases, so a run whose worker died is found in seconds.
        "GRADLAB_LEASE_SECONDS": "10",
        "GRADLAB_WORKER_STOP_GRACE_PERIOD": "2m",
        "GRADLAB_POSTGRES_IMAGE": image_names["postgres"],
        "GRADLAB_REDIS_IMAGE": image_names["redis"],
        "GRADLAB_API_IMAGE": image_names["api"],
        "GRADLAB_WORKER_IMAGE": image_names["worker"],
    }
    compose = ComposeStack(variables, env_file)
    try:
        compose.run("--profile", "cpu", "up", "--detach", "--no-build")
        yield compose
    finally:
        compose.run("--profile", "cpu", "down", "--volumes", "--remove-orphans", "--timeout", "30",
                    check=False)


def env_example() -> dict[str, str]:
    lines = (chart.CHART.parents[1] / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


def wait_ready(port: int, what: str, logs: Any) -> None:
    def ready() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200

    try:
        wait_for(f"{what} on 127.0.0.1:{port}", ready, 240, interval=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- logs ---\n{logs()}") from None


def wait_experiment(http: httpx.Client, experiment_id: str, timeout: float, logs: Any,
                    until: Any = None) -> dict[str, Any]:
    until = until or (lambda body: body["status"] in FINISHED)

    def check() -> dict[str, Any] | None:
        body = http.get(f"/experiments/{experiment_id}").json()
        return body if until(body) else None

    try:
        return wait_for(f"experiment {experiment_id}", check, timeout, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- logs ---\n{logs()}") from None


def assert_gradient_flow(http: httpx.Client, experiment_id: str, epochs: int) -> None:
    flow = http.get(f"/experiments/{experiment_id}/gradflow",
                    params={"stat": "mean_abs", "window": "last_batch"})
    assert flow.status_code == 200, flow.text
    body = flow.json()
    assert body["layers"][0] == "entry.conv" and body["layers"][-1] == "head.linear"
    [run] = body["runs"]
    assert len(run["values"]) == epochs
    assert all(math.isfinite(v) and v > 0 for row in run["values"] for v in row)
    metrics = http.get(f"/experiments/{experiment_id}/metrics").json()
    assert metrics["runs"][0]["epochs"] == list(range(epochs))  # every epoch once


def test_images_are_reused_by_content_and_the_api_image_has_no_torch(
    images: dict[str, Any], image_names: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    with capsys.disabled():
        print("\nimages (scripts/build_images.py):")
        for entry in images["images"]:
            print(f"  {entry['image']:32} {entry['bytes'] / 1e6:9.1f} MB  "
                  f"{'built' if entry['built'] else 'reused'} in {entry['seconds']} s")
    again = build_images()
    assert [e["built"] for e in again["images"]] == [False] * 4  # nothing rebuilt
    assert {e["image"] for e in again["images"]} == set(image_names.values())

    def python(image: str, code: str) -> str:
        return docker("run", "--rm", image, "python3", "-c", code).stdout.strip()

    probe = "import importlib.util as u, os; print(u.find_spec('torch') is not None, os.getuid())"
    assert python(image_names["api"], probe) == "False 10001"
    assert python(image_names["worker"], probe) == "True 10001"
    for target in ("api", "worker"):
        labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}",
                        image_names[target]).stdout
        assert f'"org.opencontainers.image.title":"gradlab-{target}"' in labels
        stop_signal = docker("image", "inspect", "--format", "{{.Config.StopSignal}}",
                             image_names[target]).stdout.strip()
        assert stop_signal == "SIGTERM"


def test_compose_trains_a_run_through_a_worker_restart(stack: ComposeStack) -> None:
    port = int(stack.environ["GRADLAB_API_PORT"])
    wait_ready(port, "the api container", stack.logs)
    token = admin_token([*stack.command, "exec", "-T", "api"])
    epochs = 4
    with api_client(port, token) as http:
        created = http.post("/experiments", json=spec("compose-restart", epochs))
        assert created.status_code == 201, created.text
        experiment_id = created.json()["id"]
        running = wait_experiment(http, experiment_id, 300, stack.logs,
                                  until=lambda b: b["runs"][0]["epochs_done"] >= 1)
        assert running["status"] == "running", running  # mid-run, not finished
        before = stack.started_at("worker-cpu")
        stack.run("restart", "--timeout", "120", "worker-cpu", timeout=300)
        assert stack.started_at("worker-cpu") != before

        done = wait_experiment(http, experiment_id, 600, stack.logs)
        assert done["status"] == "succeeded", f"{done}\n{stack.logs('worker-cpu', 'reaper')}"
        [run] = done["runs"]
        assert run["epochs_done"] == epochs and run["attempt"] <= 2
        assert_gradient_flow(http, experiment_id, epochs)


def helm_values(image_names: dict[str, str], database_url: str, queue: str) -> dict[str, Any]:
    """The chart's values for this machine: local images, the compose services, a CPU worker."""
    def image(target: str) -> dict[str, str]:
        repository, tag = image_names[target].rsplit(":", 1)
        return {"repository": repository, "tag": tag, "pullPolicy": "Never"}

    return {
        "image": {"api": image("api"), "worker": image("worker")},
        "database": {"url": database_url},
        # Redis database 1: the compose stack's workers never see these runs.
        "broker": {"url": "redis://redis:6379/1"},
        "settings": {"GRADLAB_LEASE_SECONDS": 10, "GRADLAB_CELERY_QUEUE": queue},
        "worker": {"gpu": {"enabled": False}, "concurrency": 1,
                   "data": {"existingClaim": "cifar100"},
                   "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                 "limits": {"memory": "8Gi"}}},
    }


def test_the_charts_containers_train_against_the_compose_services(
    stack: ComposeStack, image_names: dict[str, str], data_dir: Path,
) -> None:
    database = f"helm_{uuid.uuid4().hex[:8]}"
    user, password = stack.environ["POSTGRES_USER"], stack.environ["POSTGRES_PASSWORD"]
    stack.run("exec", "-T", "postgres", "createdb", "-U", user, database)
    objects = chart.manifests(helm_values(
        image_names, f"postgresql://{user}:{password}@postgres:5432/{database}", database))
    names = {part: f"{stack.project}-helm-{part}" for part in ("api", "worker", "reaper")}
    port = free_port()

    def run(kind: str, suffix: str, container: str, **options: Any) -> str:
        argv = docker_run_argv(chart.find(objects, kind, suffix), container, objects,
                               network=stack.network, claims={"cifar100": data_dir}, **options)
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
        assert done.returncode == 0, f"{' '.join(argv[:3])} ... failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    def logs() -> str:
        return "\n".join(f"--- {name} ---\n" + docker("logs", "--tail", "40", name,
                                                      check=False).stderr[-3000:]
                         for name in names.values())

    try:
        # The pre-install hook, then the three Deployments' containers.
        migrated = run("Job", "-migrate", "migrate", name=f"{stack.project}-helm-migrate",
                       detach=False)
        assert "at " in migrated
        run("Deployment", "-api", "api", name=names["api"], publish={8000: port})
        run("Deployment", "-worker", "worker", name=names["worker"])
        run("Deployment", "-reaper", "reaper", name=names["reaper"])
        wait_ready(port, "the chart's api container", logs)
        token = admin_token(["docker", "exec", names["api"]])
        with api_client(port, token) as http:
            created = http.post("/experiments", json=spec("helm-containers", 1))
            assert created.status_code == 201, created.text
            done = wait_experiment(http, created.json()["id"], 600, logs)
            assert done["status"] == "succeeded", f"{done}\n{logs()}"
            assert_gradient_flow(http, created.json()["id"], 1)
    finally:
        for name in names.values():
            docker("rm", "--force", name, check=False)
