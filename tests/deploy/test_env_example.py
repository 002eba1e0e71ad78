""".env.example never drifts: it names every gradlab setting and every variable
docker-compose.yml reads; and every gradlab container accepts what it is given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gradlab.settings import (
    ApiSettings,
    ClientSettings,
    GradlabSettings,
    ServerSettings,
    WorkerSettings,
    readers,
)

REPO = Path(__file__).resolve().parents[2]


def env_example_names() -> set[str]:
    """Variables set (NAME=...) or shown commented out (# NAME=...) in .env.example."""
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", text, re.M))


def test_every_setting_is_in_env_example() -> None:
    expected = set(readers())  # the settings of every process kind
    assert {"GRADLAB_DATABASE_URL", "GRADLAB_PACK_SIZE", "GRADLAB_URL"} <= expected
    assert expected - env_example_names() == set()


def test_every_variable_of_the_compose_file_is_in_env_example() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", compose))
    assert used
    assert used - env_example_names() == set()


# The settings kind each gradlab container's command builds (gradlab.settings.kinds).
KIND_OF_COMMAND: dict[str, type[GradlabSettings]] = {
    "migrate": ServerSettings, "api": ApiSettings, "worker": WorkerSettings,
    "reaper": WorkerSettings,
}


def env_example_values(*, commented_too: bool) -> dict[str, str]:
    """GRADLAB_ variables .env.example sets; with ``commented_too``, also those it shows
    commented out that a deployment may turn on (but the client's, not read by containers)."""
    text = (REPO / ".env.example").read_text()
    pattern = r"^(?:#\s*)?(GRADLAB_[A-Z0-9_]*)=(.*)$" if commented_too else (
        r"^(GRADLAB_[A-Z0-9_]*)=(.*)$")
    found = dict(re.findall(pattern, text, re.M))
    client = ClientSettings.names() if commented_too else frozenset()
    return {k: v or "x" for k, v in found.items() if k not in client}


@pytest.mark.parametrize("commented_too", [False, True], ids=["as shipped", "all turned on"])
def test_every_compose_container_accepts_the_env_file_it_is_given(commented_too: bool) -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    checked = []
    for name, service in services.items():
        if "env_file" not in service:
            continue
        environ = {**env_example_values(commented_too=commented_too),
                   **{k: str(v) for k, v in service.get("environment", {}).items()}}
        kind = KIND_OF_COMMAND[service["command"][1]]
        assert kind.unusable(environ) == [], name
        checked.append(name)
    assert sorted(checked) == ["api", "migrate", "reaper", "worker", "worker-cpu"]
