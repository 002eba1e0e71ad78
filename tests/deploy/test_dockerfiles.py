"""The Dockerfiles are hadolint-clean, and the image's inputs agree with pyproject.toml: every
package folder is copied into the wheel stage and let through .dockerignore."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "Dockerfile", *sorted((REPO / "docker").glob("*/Dockerfile"))]
HADOLINT = Path(sys.executable).parent / "hadolint"


def package_folders() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(pyproject["tool"]["setuptools"]["package-dir"].values())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run([str(HADOLINT), "--config", str(REPO / ".hadolint.yaml"),
                           str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_stage_copies_every_package_folder() -> None:
    text = (REPO / "Dockerfile").read_text()
    stage = text.split("FROM builder AS wheel", 1)[1].split("\nFROM ", 1)[0]
    copied = {src for src, dst in re.findall(r"^COPY (\S+) (\S+)$", stage, re.M) if src == dst}
    assert copied == package_folders()


def test_dockerignore_lets_through_exactly_what_the_build_reads() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert allowed == package_folders() | {"pyproject.toml", "README.md", "docker/requirements.py"}


def test_build_requirements_follow_the_extras() -> None:
    def requirements(*args: str) -> list[str]:
        return subprocess.run([sys.executable, str(REPO / "docker/requirements.py"),
                               str(REPO / "pyproject.toml"), *args], capture_output=True,
                              text=True, check=True).stdout.split()

    api = requirements("api")
    assert any(r.startswith("fastapi") for r in api)
    # the API image is torch-free and pandas-free (pandas is the client's optional extra)
    assert not any(r.startswith(("torch", "pytest", "pandas")) for r in api)
    worker = requirements("worker")
    assert not any(r.startswith("fastapi") for r in worker)
    torch = requirements("worker", "--only", "torch", "torchvision")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = [r for r in pyproject["project"]["optional-dependencies"]["worker"]
              if r.startswith(("torch==", "torchvision=="))]
    assert torch == pinned == ["torch==2.14.1", "torchvision==0.29.1"]
