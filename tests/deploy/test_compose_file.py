"""docker-compose.yml: valid against the Compose Specification (check-jsonschema), and what
matters for running it: only the API published, on 127.0.0.1; healthchecks and the order of
start-up; GPU and CPU profiles; one reaper; read-only, unprivileged gradlab containers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GRADLAB_SERVICES = ("migrate", "api", "worker", "worker-cpu", "reaper")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def test_the_file_follows_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE_FILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_debians_docker_compose_1_29_reads_it_with_both_profiles() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (scripts/ensure_docker.sh installs it)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    done = subprocess.run(
        [compose, "--env-file", ".env.example", "--profile", "gpu", "--profile", "cpu",
         "config", "--quiet"],
        env={**environ, "GRADLAB_ENV_FILE": ".env.example"}, cwd=REPO,
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_only_the_api_is_published_and_on_127_0_0_1(services: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"api": ["127.0.0.1:${GRADLAB_API_PORT:-8000}:8000"]}


def test_start_up_waits_for_health_and_the_migration(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["gradlab", "migrate"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "worker-cpu", "reaper"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}, name
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_gpu_and_cpu_workers_are_profiles_and_the_reaper_is_one(services: dict[str, Any]) -> None:
    assert services["worker"]["profiles"] == ["gpu"]
    [devices] = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["worker-cpu"]["environment"]["GRADLAB_DEVICE"] == "cpu"
    assert "profiles" not in services["reaper"] and "deploy" not in services["reaper"]
    assert services["reaper"]["command"][:2] == ["gradlab", "reaper"]
    for name in ("worker", "worker-cpu"):
        assert services[name]["stop_grace_period"] == "${GRADLAB_WORKER_STOP_GRACE_PERIOD:-10m}"
        assert services[name]["volumes"] == ["${GRADLAB_HOST_DATA_DIR:-./data}:/data:ro",
                                             "checkpoints:/checkpoints"]
    # the folder checkpoint store's volume is shared by the API (which deletes) and workers
    assert services["api"]["volumes"] == ["checkpoints:/checkpoints"]


def test_gradlab_containers_are_read_only_and_unprivileged(services: dict[str, Any]) -> None:
    for name in GRADLAB_SERVICES:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["env_file"] == "${GRADLAB_ENV_FILE:-.env}", name
        assert service["environment"]["GRADLAB_BROKER_URL"] == "redis://redis:6379/0", name
        assert service["environment"]["GRADLAB_AUTH_REQUIRED"] == "${GRADLAB_AUTH_REQUIRED:-true}"


def test_every_image_can_be_swapped_by_a_variable(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service["image"].startswith("${GRADLAB_"), name
