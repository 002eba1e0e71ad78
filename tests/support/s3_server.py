"""A real S3 protocol server for tests: moto's standalone server (no S3 server installs from
the package registries here), on 127.0.0.1 and a free port, one per test session.

A pytest plugin (loaded by ``tests/conftest.py``). Fixtures:

- ``moto_s3_endpoint`` (session): the server's URL; the AWS_* variables the boto3 clients
  need (fake credentials, a region) are set for the session and its subprocesses.
- ``s3_bucket`` (function): a fresh bucket on it, named uniquely.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import VENV_BIN, free_port, wait_for

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "gradlab-test",
    "AWS_SECRET_ACCESS_KEY": "gradlab-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_argv(port: int) -> list[str]:
    found = VENV_BIN / "moto_server"
    program = [str(found)] if found.exists() else [sys.executable, "-m", "moto.server"]
    return [*program, "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def moto_s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path: Path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log, pytest.MonkeyPatch.context() as env:
        for name, value in FAKE_AWS_ENV.items():
            env.setenv(name, value)
        process = subprocess.Popen(moto_server_argv(port), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for("moto's S3 server", lambda: httpx.get(url, timeout=2).status_code < 500,
                     timeout=60)
            yield url
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
def s3_bucket(moto_s3_endpoint: str) -> str:
    import boto3

    name = f"gradlab-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_env(endpoint: str, bucket: str, prefix: str = "checkpoints") -> dict[str, str]:
    """GRADLAB_* and AWS_* variables for a process using this bucket as its checkpoint store."""
    return {**FAKE_AWS_ENV, "GRADLAB_CHECKPOINT_STORE": f"s3://{bucket}/{prefix}",
            "GRADLAB_S3_ENDPOINT_URL": endpoint}
