"""Rules of the architecture that the import contracts (pyproject.toml, `lint-imports`) cannot
express: SQL only in store/, and an API process that never loads the worker or matplotlib, nor
asks for GPUs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

# Parts that may speak SQL: the store, and the migrations that define the schema.
SQL_PARTS = {"store", "migrations"}
PRODUCT_PARTS = ("api", "cli", "client", "core", "dispatch", "observability", "science", "services",
                 "settings", "worker")
# SQLAlchemy's statement builders; Session/sessionmaker types and exceptions are fine anywhere.
SQL_NAMES = {"select", "insert", "update", "delete", "text", "func", "and_", "or_", "literal",
             "bindparam", "column", "table"}


def _sql_uses(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("sqlalchemy", "sqlalchemy.sql"):
            names = {alias.name for alias in node.names} & SQL_NAMES
            if names:
                found.append(f"{path.relative_to(root)}:{node.lineno} imports {sorted(names)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "scalar", "scalars")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "session"):
            found.append(f"{path.relative_to(root)}:{node.lineno} runs session.{node.func.attr}")
    return found


def test_sql_is_written_only_in_store_and_migrations() -> None:
    offences = [
        use
        for part in PRODUCT_PARTS
        for path in sorted((REPO / part).rglob("*.py"))
        for use in _sql_uses(path)
    ]
    assert offences == [], "SQL outside store/:\n" + "\n".join(offences)


def test_the_rule_catches_sql_outside_the_store(tmp_path: Path) -> None:
    # written outside the checkout: a test beside this one (pytest-xdist) may be copying it
    sample = tmp_path / "worker" / "_sample_for_rule_test.py"
    sample.parent.mkdir()
    sample.write_text("from sqlalchemy import update\n\ndef f(session):\n"
                      "    session.execute(update(1))\n")
    assert _sql_uses(sample, root=tmp_path) == [
        "worker/_sample_for_rule_test.py:1 imports ['update']",
        "worker/_sample_for_rule_test.py:4 runs session.execute",
    ]


def test_starting_the_api_never_loads_the_worker_or_matplotlib_or_asks_for_gpus(
    tmp_path: Path,
) -> None:
    """Training is the workers' and GPUs are theirs; plotting loads with the first figure asked
    for (half a second of every API start otherwise)."""
    # A fake nvidia-smi first on PATH leaves a mark if anything in the API process runs it.
    mark = tmp_path / "nvidia-smi-ran"
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {mark}\necho 'GPU 0: fake'\n")
    fake.chmod(0o755)
    code = """
import sys
from fastapi.testclient import TestClient
from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
app = create_app(ApiSettings(database_url="sqlite://", broker_url="redis://127.0.0.1:6379/15"))
with TestClient(app) as client:
    client.get("/healthz")
    kind = type(app.state.dispatcher).__name__
loaded = sorted(m for m in sys.modules
                if m.startswith(("gradlab.worker", "gradlab.core", "torch", "matplotlib")))
print(kind, loaded)
"""
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "CeleryDispatcher []"
    assert not mark.exists()
