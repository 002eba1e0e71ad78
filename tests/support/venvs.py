"""Fresh virtual environments for tests of how gradlab installs (wheel, editable, extras).

A venv that installs packages from the registries is cached under ``.cache/venvs/`` by a hash
of ``pyproject.toml`` (the only file that changes what it holds), so the suite pays for the
install once per dependency change, not once per run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

CACHE = REPO / ".cache" / "venvs"


def pyproject_hash() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]


def run(argv: list[str], *, cwd: Path = REPO, timeout: float = 900) -> str:
    """Run a command; on failure raise with its output (what explains the failure)."""
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if done.returncode != 0:
        output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
    return done.stdout


def fresh_venv(path: Path, *, with_pip: bool = True) -> Path:
    """An empty venv at ``path`` (removed first); returns its bin folder. Without pip it gets
    nothing of its own (no old setuptools either): for venvs that borrow the project venv's
    packages through a .pth file."""
    shutil.rmtree(path, ignore_errors=True)
    run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)])
    return path / "bin"


def cached_venv(name: str, requirement: str) -> Path:
    """A venv with ``pip install -e <requirement>`` (e.g. ``.[api]``), reused while
    pyproject.toml is unchanged; returns its bin folder. Editable, so it runs this checkout's
    code whatever the cache holds."""
    path = CACHE / f"{name}-{pyproject_hash()}"
    marker = path / ".installed"
    if not marker.is_file():
        for stale in CACHE.glob(f"{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        bin_dir = fresh_venv(path)
        # --no-compile: byte-compiling every installed module is a quarter of the install;
        # the tests' processes compile the few they import.
        run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-compile", "-e",
             requirement])
        marker.touch()
    return path / "bin"


def installed_distributions(bin_dir: Path) -> set[str]:
    """Lower-case names of what ``pip list`` shows in that venv."""
    listing = run([str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze"])
    return {line.split("==")[0].lower() for line in listing.splitlines() if "==" in line}
