""".env.example never drifts: it names every gradlab setting and every variable
docker-compose.yml reads."""

from __future__ import annotations

import re
from pathlib import Path

from gradlab.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def env_example_names() -> set[str]:
    """Variables set (NAME=...) or shown commented out (# NAME=...) in .env.example."""
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", text, re.M))


def test_every_setting_is_in_env_example() -> None:
    prefix = Settings.model_config["env_prefix"]
    expected = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    assert expected - env_example_names() == set()


def test_every_variable_of_the_compose_file_is_in_env_example() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", compose))
    assert used
    assert used - env_example_names() == set()
