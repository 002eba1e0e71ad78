"""The dashboard's committed bundle (api/dashboard/static/app.js and app.css, what the API
serves) is what web/src builds to: a change to the source without `make dashboard`, or an
edit of the built file by hand, fails here.

Builds with the pinned esbuild from the npm registry (web/package-lock.json) into a temporary
folder; the committed files are never touched."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
STATIC = REPO / "api" / "dashboard" / "static"


def _build_command(outfile: Path) -> list[str]:
    """package.json's build script, writing to ``outfile`` instead of the committed bundle."""
    script = json.loads((WEB / "package.json").read_text())["scripts"]["build"].split()
    assert script[0] == "esbuild", script
    options = [a for a in script[1:] if not a.startswith("--outfile=")]
    return [str(WEB / "node_modules" / ".bin" / "esbuild"), *options, f"--outfile={outfile}"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: scripts/ensure_services.sh installs Debian's",
                    pytrace=False)
    if not (WEB / "node_modules" / ".bin" / "esbuild").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True,
                       capture_output=True, timeout=600)
    out = tmp_path_factory.mktemp("bundle") / "app.js"
    subprocess.run(_build_command(out), cwd=WEB, check=True, capture_output=True, timeout=120)
    return out.parent


@pytest.mark.parametrize("name", ["app.js", "app.css"])
def test_the_committed_bundle_is_the_build_of_web_src(built: Path, name: str) -> None:
    assert (built / name).read_bytes() == (STATIC / name).read_bytes(), (
        f"api/dashboard/static/{name} differs from what web/src builds to: run `make dashboard`"
        " and commit the result")
