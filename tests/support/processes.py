"""Real service processes for end-to-end tests: a Celery worker, the API, ``gradlab serve``.

Each process logs to a file; on failure the tail of that log is what explains it, so helpers
that wait include it in their error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def real_data_dir() -> Path | None:
    for candidate in (os.environ.get("GRADLAB_DATA_DIR"), REPO.parent / "shared/data/cifar100"):
        if candidate and (Path(candidate) / "train.npz").is_file():
            return Path(candidate)
    return None


class ServiceProcess:
    """A subprocess with its own log file and process group."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, env=dict(env), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signum)

    def children(self) -> list[int]:
        """The ids of the processes this one started (a Celery worker's pool children)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # ended meanwhile
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def wait_for(what: str, check: Callable[[], T | None], timeout: float,
             *, interval: float = 0.5, service: ServiceProcess | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail with the service's log."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        if service is not None and not service.alive():
            break
        time.sleep(interval)
    log = f"\n--- {service.name} log ---\n{service.log_tail()}" if service else ""
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error}){log}")


def wait_http_ok(url: str, timeout: float, service: ServiceProcess | None = None) -> None:
    wait_for(f"{url} to answer", lambda: httpx.get(url, timeout=2).status_code == 200,
             timeout, service=service)


def start_api(env: Mapping[str, str], log_dir: Path, name: str = "api",
              extra_args: tuple[str, ...] = ()) -> tuple[ServiceProcess, str]:
    """A real uvicorn serving ``create_app()`` (settings from ``env``) on a free port."""
    port = free_port()
    api = ServiceProcess(
        name,
        [str(VENV_BIN / "python"), "-m", "uvicorn", "--factory", "gradlab.api.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), *extra_args],
        env,
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthz", timeout=60, service=api)
    except AssertionError:
        api.stop()
        raise
    return api, url
