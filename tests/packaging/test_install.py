"""gradlab installs as ``gradlab.<part>`` from the repository's top-level folders, as a wheel,
an editable and a strict editable install, and imports correctly from any directory (the
repository root included, where folders named ``api/``, ``core/``... sit next to you)."""

from __future__ import annotations

import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.support.processes import REPO
from tests.support.venvs import fresh_venv, run

PARTS = ("api", "cli", "client", "core", "dispatch", "migrations", "observability", "science",
         "services", "settings", "store", "worker")
# Every part imported; migrations applied (found as package data through importlib.resources).
IMPORT_CHECK = """
import importlib, json, sys, tempfile
parts = {parts!r}
files = {{p: importlib.import_module("gradlab." + p).__file__ for p in parts}}
from gradlab.store import migrate
url = "sqlite:///" + tempfile.mkdtemp() + "/check.db"
migrate.upgrade(url)
print(json.dumps({{"files": files, "revision": migrate.current_revision(url)}}))
"""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_of_every_part_is_listed_for_installation() -> None:
    config = _pyproject()["tool"]["setuptools"]
    mapping = config["package-dir"]
    assert sorted(mapping) == [f"gradlab.{p}" for p in PARTS]
    on_disk = {
        "gradlab." + ".".join(init.parent.relative_to(REPO).parts)
        for part in PARTS
        for init in (REPO / part).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk
    assert not (REPO / "gradlab").exists(), "no gradlab/ folder at the root: parts are top-level"


def _link_dev_dependencies(bin_dir: Path) -> None:
    """Let a fresh venv see the project venv's third-party packages (no downloads), but not
    its editable gradlab: a plain path in a .pth file does not run the editable finder's hook."""
    venv = bin_dir.parent
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    dev_site = Path(sysconfig.get_path("purelib"))
    (site / "dev-dependencies.pth").write_text(f"{dev_site}\n")


def _imports(bin_dir: Path, cwd: Path) -> dict:
    import json

    out = run([str(bin_dir / "python"), "-c", IMPORT_CHECK.format(parts=PARTS)], cwd=cwd)
    return json.loads(out.strip().splitlines()[-1])


def _assert_imported_from(result: dict, root: Path) -> None:
    for part, file in result["files"].items():
        # Not resolved: strict mode links the checkout's files from build/__editable__*.
        assert Path(file).absolute().is_relative_to(root.absolute()), (part, file, root)
    assert result["revision"] is not None


@pytest.mark.slow
def test_a_wheel_installs_every_part_and_imports_from_the_repository_root(
    tmp_path: Path,
) -> None:
    # Built from a copy of the checkout's files: setuptools' build/ in the checkout may hold
    # modules deleted since, which would land in the wheel.
    source = _copy_of_checkout(tmp_path / "source")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)])
    wheel = next((tmp_path / "dist").glob("gradlab-*.whl"))
    bin_dir = fresh_venv(tmp_path / "venv", with_pip=False)
    _link_dev_dependencies(bin_dir)
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)])
    site = tmp_path / "venv" / "lib"
    for cwd in (REPO, tmp_path):
        _assert_imported_from(_imports(bin_dir, cwd), site)
    # A namespace package: no gradlab/__init__.py that another distribution could clash with.
    assert not list(site.rglob("site-packages/gradlab/__init__.py"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_editable_installs_import_this_checkout_from_any_directory(
    tmp_path: Path, mode: str
) -> None:
    # A copy of the checkout: a strict install writes build/__editable__.gradlab-*, the very
    # link tree the project's own venv imports from (`make setup` installs in strict mode).
    checkout = _copy_of_checkout(tmp_path / "checkout")
    bin_dir = fresh_venv(tmp_path / "venv", with_pip=False)
    _link_dev_dependencies(bin_dir)
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps",
         "--no-build-isolation", "-e", str(checkout), "--config-settings",
         f"editable_mode={mode}"])
    # Strict mode links the files from build/__editable__*; lenient mode maps to the folders.
    root = checkout / "build" if mode == "strict" else checkout
    for cwd in (checkout, tmp_path):
        _assert_imported_from(_imports(bin_dir, cwd), root)


def _copy_of_checkout(target: Path) -> Path:
    """The checkout's files as git sees them (tracked, and untracked but not ignored)."""
    for name in run(["git", "ls-files", "-co", "--exclude-standard"]).splitlines():
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target
