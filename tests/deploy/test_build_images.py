"""scripts/build_images.py without Docker: the content hash that decides whether an image is
rebuilt follows the image's inputs and nothing else, and the pip settings handed to the build
keep what the build can use."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script, pointed at a copy of the repository's image inputs in tmp_path."""
    spec = importlib.util.spec_from_file_location("build_images", REPO / "scripts/build_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    for folder in module.package_folders():
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(module, "REPO", tmp_path)
    return module


def test_the_hash_changes_with_the_source_and_not_with_other_files(
    builder: ModuleType, tmp_path: Path,
) -> None:
    args = {"BASE_IMAGE": "gradlab-base:bookworm", "VERSION": "0.1.0"}
    before = builder.content_hash("api", args)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_new.py").write_text("x = 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("notes\n")
    (tmp_path / "science" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "science" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert builder.content_hash("api", args) == before
    assert builder.content_hash("postgres", args) != before  # each image its own inputs

    spec_file = tmp_path / "science" / "spec.py"
    spec_file.write_text(spec_file.read_text() + "\n# changed\n")
    assert builder.content_hash("api", args) != before


def test_build_arguments_are_inputs(builder: ModuleType) -> None:
    cuda = builder.content_hash("worker", {"BASE_IMAGE": "b", "TORCH_VARIANT": "cuda"})
    cpu = builder.content_hash("worker", {"BASE_IMAGE": "b", "TORCH_VARIANT": "cpu"})
    assert cuda != cpu


def test_pip_settings_reach_the_build_as_secrets_without_local_paths(
    builder: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(builder, "pip_settings", lambda: {
        "cert": str(ca), "timeout": "180", "find-links": "/opt/wheels",
        "extra-index-url": "file:///opt/pypi/simple https://mirror.example/simple"})
    options = builder.pip_secrets(tmp_path)
    assert options == ["--secret", f"id=pip_ca,src={ca}",
                       "--secret", f"id=pip_conf,src={tmp_path / 'pip.conf'}"]
    assert (tmp_path / "pip.conf").read_text() == (
        "[global]\nextra-index-url = https://mirror.example/simple\ntimeout = 180\n"
        "cert = /run/secrets/pip_ca\n")
