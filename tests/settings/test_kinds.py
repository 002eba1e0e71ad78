"""Settings per process kind (API, worker, client): each reads its own GRADLAB_ variables,
refuses another kind's and unknown ones at start with a message naming the variable, and the
server kinds let one another's pass (a deployment hands one env to every server container)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from gradlab.client import GradlabClient
from gradlab.settings import (
    ApiSettings,
    ClientSettings,
    ServerSettings,
    UnusableSettingError,
    WorkerSettings,
    readers,
)
from tests.support.processes import VENV_BIN


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GRADLAB_ variable of the caller's (the Makefile exports GRADLAB_DATA_DIR)."""
    for name in [n for n in os.environ if n.upper().startswith("GRADLAB_")]:
        monkeypatch.delenv(name)
    yield


def refusal(kind: type[ClientSettings | ServerSettings]) -> str:
    with pytest.raises(UnusableSettingError) as refused:
        kind()
    return str(refused.value)


def test_each_kind_has_its_defaults_and_only_its_fields() -> None:
    api, worker, client = ApiSettings(), WorkerSettings(), ClientSettings()
    assert (api.database_url, api.broker_url, api.auth_required, api.max_study_cells) == (
        "sqlite:///./gradlab.db", None, False, 256)
    assert (worker.database_url, worker.device, worker.pack_size, worker.lease_seconds,
            worker.gpu_sharing) == ("sqlite:///./gradlab.db", "auto", None, 300, "packs")
    assert (client.url, client.token) == ("http://127.0.0.1:8000", None)
    assert "device" not in ApiSettings.model_fields
    assert "auth_required" not in WorkerSettings.model_fields
    assert set(ServerSettings.model_fields) == (
        set(ApiSettings.model_fields) & set(WorkerSettings.model_fields))


def test_the_client_builds_without_any_database_or_server_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRADLAB_URL", "http://gradlab.example:8000")
    monkeypatch.setenv("GRADLAB_TOKEN", "secret")
    assert set(ClientSettings.model_fields) == {"url", "token"}
    assert ClientSettings().model_dump() == {"url": "http://gradlab.example:8000",
                                             "token": "secret"}
    with GradlabClient() as client:
        assert client.url == "http://gradlab.example:8000"


@pytest.mark.parametrize("name", ["GRADLAB_DATABASE_URL", "GRADLAB_PACK_SIZE",
                                  "GRADLAB_MAX_PARAMETERS"])
def test_the_client_refuses_a_server_variable_naming_who_reads_it(
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    monkeypatch.setenv(name, "2")
    reader = " and ".join(readers()[name])
    assert f"{name}: read by {reader}, not by the client" in refusal(ClientSettings)
    with pytest.raises(UnusableSettingError, match=name):
        GradlabClient()


def test_api_and_worker_refuse_the_clients_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADLAB_TOKEN", "x" * 40)
    message = refusal(ApiSettings)
    assert "GRADLAB_TOKEN: read by the client, not by the API" in message
    assert "did you mean GRADLAB_ADMIN_TOKEN?" in message
    monkeypatch.delenv("GRADLAB_TOKEN")
    monkeypatch.setenv("GRADLAB_URL", "http://127.0.0.1:8000")
    assert "GRADLAB_URL: read by the client, not by the worker" in refusal(WorkerSettings)


@pytest.mark.parametrize("kind", [ApiSettings, WorkerSettings, ClientSettings, ServerSettings])
def test_every_kind_refuses_an_unknown_variable_and_suggests_the_setting_meant(
    monkeypatch: pytest.MonkeyPatch, kind: type[ClientSettings | ServerSettings],
) -> None:
    monkeypatch.setenv("GRADLAB_PACKSIZE", "2")
    monkeypatch.setenv("gradlab_databse_url", "sqlite://")  # read case-insensitively
    monkeypatch.setenv("GRADLAB_NOTHING_LIKE_IT", "1")
    message = refusal(kind)
    assert ("GRADLAB_PACKSIZE: unknown setting; did you mean GRADLAB_PACK_SIZE "
            "(read by the worker)?") in message
    assert "GRADLAB_DATABSE_URL: unknown setting; did you mean GRADLAB_DATABASE_URL" in message
    assert "GRADLAB_NOTHING_LIKE_IT: unknown setting\n" in message + "\n"


def test_server_kinds_let_one_anothers_variables_pass_and_read_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRADLAB_PACK_SIZE", "2")  # the worker's
    monkeypatch.setenv("GRADLAB_MAX_PARAMETERS", "1000")  # the API's
    monkeypatch.setenv("GRADLAB_DATABASE_URL", "postgres://db/gradlab")  # both
    assert ApiSettings().max_parameters == 1000
    assert WorkerSettings().pack_size == 2
    assert ServerSettings().database_url == "postgresql+psycopg://db/gradlab"


@pytest.mark.parametrize("kind", [ApiSettings, WorkerSettings, ClientSettings])
def test_deployment_variables_and_empty_values_pass_every_kind(
    monkeypatch: pytest.MonkeyPatch, kind: type[ClientSettings | ServerSettings],
) -> None:
    monkeypatch.setenv("GRADLAB_API_PORT", "8000")  # docker-compose.yml's, in its env file
    monkeypatch.setenv("GRADLAB_GIT_REVISION", "abc123")  # set by the images
    monkeypatch.setenv("GRADLAB_TOKEN" if kind is not ClientSettings else "GRADLAB_DEVICE", "")
    kind()


def _gradlab(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GRADLAB_")}
    return subprocess.run([str(VENV_BIN / "gradlab"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_remote_verb_given_a_worker_variable_exits_2_before_any_request() -> None:
    # Port 9 (discard): were a request sent, the error would be a connection error instead.
    done = _gradlab("ls", GRADLAB_URL="http://127.0.0.1:9", GRADLAB_DEVICE="cuda")
    assert done.returncode == 2
    assert "the client cannot use" in done.stderr
    assert "GRADLAB_DEVICE: read by the worker, not by the client" in done.stderr


def test_a_worker_given_a_misspelt_variable_exits_2_naming_it() -> None:
    done = _gradlab("worker", GRADLAB_BROKER_URL="redis://127.0.0.1:9/0",
                    GRADLAB_PROCESSES_PER_CPU="4")
    assert done.returncode == 2
    assert ("GRADLAB_PROCESSES_PER_CPU: unknown setting; did you mean "
            "GRADLAB_PROCESSES_PER_GPU (read by the worker)?") in done.stderr
