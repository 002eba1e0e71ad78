"""`gradlab token create|list|revoke` as a real command, and the tokens it prints at work."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from gradlab.api.app import create_app
from gradlab.settings import ApiSettings
from gradlab.store import migrate
from tests.api.conftest import RecordingDispatcher, small_spec
from tests.support.processes import VENV_BIN


def _gradlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "gradlab"), *args], capture_output=True, text=True,
                          timeout=120)


def test_token_create_list_revoke_and_the_token_at_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gradlab.db'}"
    migrate.upgrade(url)
    created = _gradlab("token", "create", "--user", "alice", "--db", url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("glt_") and "shown once" in created.stderr
    admin = _gradlab("token", "create", "--user", "root", "--admin", "--db", url)
    assert "for admin 'root'" in admin.stderr

    listed = _gradlab("token", "list", "--db", url)
    assert token[:12] in listed.stdout and token not in listed.stdout  # never shown again
    assert "alice (user)" in listed.stdout and "root (admin)" in listed.stdout
    # admin is the token's: root's next token is a user's, and the grant can be taken back
    plain = _gradlab("token", "create", "--user", "root", "--db", url)
    assert "for user 'root'" in plain.stderr
    root_token = admin.stdout.strip()
    demoted = _gradlab("token", "revoke-admin", root_token[:12], "--db", url)
    assert demoted.returncode == 0 and "no longer admin" in demoted.stdout
    assert "root (admin)" not in _gradlab("token", "list", "--db", url).stdout

    settings = ApiSettings(database_url=url, broker_url=None, auth_required=True)
    with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert client.post("/experiments", json=small_spec("mine"), headers=headers
                           ).status_code == 201
        revoked = _gradlab("token", "revoke", token[:12], "--db", url)
        assert revoked.returncode == 0 and "revoked" in revoked.stdout
        assert client.get("/experiments", headers=headers).status_code == 401

    assert _gradlab("token", "revoke", "glt_nothing", "--db", url).returncode == 2
    bad = _gradlab("token", "create", "--user", "", "--db", url)
    assert bad.returncode == 2 and "--user" in bad.stderr
