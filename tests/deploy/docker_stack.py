"""Docker for the deployment tests: images built (or reused by content hash) through
scripts/build_images.py, a docker-compose project of the test's own, and a rendered
Kubernetes container turned into the `docker run` a kubelet's runtime would make of it.

Every port is published on 127.0.0.1, every request goes there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.chart import Manifest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"


def docker_unavailable() -> str | None:
    """Why Docker cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker CLI (apt-get install docker.io; .ci/run does)"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return f"the Docker daemon does not answer: {info.stderr.strip()[:300]}"
    return None


def compose_command() -> list[str]:
    """Debian's docker-compose 1.29, else the Compose v2 plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    raise AssertionError("docker runs but Compose is missing: apt-get install docker-compose")


def build_images() -> dict[str, Any]:
    """Build (or reuse) the four images; scripts/build_images.py's JSON report."""
    done = subprocess.run([sys.executable, str(REPO / "scripts/build_images.py"), "--json"],
                          capture_output=True, text=True, check=False, timeout=3600)
    assert done.returncode == 0, f"image build failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def docker(*args: str, timeout: float = 300,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


class ComposeStack:
    """A compose project named for this test run, with its own env file and volumes."""

    def __init__(self, variables: dict[str, str], env_file: Path):
        self.project = f"gradlab-test-{uuid.uuid4().hex[:8]}"
        self.network = f"{self.project}_default"
        self.env_file = env_file
        env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
        # Nothing from the caller's environment leaks into the compose file's ${...}.
        self.environ = {k: v for k, v in os.environ.items()
                        if not k.startswith(("GRADLAB_", "POSTGRES_", "COMPOSE_"))}
        self.environ.update(variables)
        self.command = [*compose_command(), "--project-name", self.project,
                        "--file", str(COMPOSE_FILE), "--env-file", str(env_file)]

    def run(self, *args: str, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.command, *args], capture_output=True, text=True,
                              env=self.environ, cwd=REPO, check=False, timeout=timeout)
        if check:
            assert done.returncode == 0, (
                f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}\n"
                f"--- logs ---\n{self.logs()}")
        return done

    def logs(self, *services: str) -> str:
        done = subprocess.run([*self.command, "logs", "--no-color", "--tail", "60", *services],
                              capture_output=True, text=True, env=self.environ, cwd=REPO,
                              check=False, timeout=120)
        return done.stdout[-8000:]

    def container_id(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def started_at(self, service: str) -> str:
        return docker("inspect", "--format", "{{.State.StartedAt}}",
                      self.container_id(service)).stdout.strip()


def admin_token(exec_in_api: list[str]) -> str | None:
    """A bearer token from `gradlab token create` in the api container, where that command
    exists (the token work); None where the API has no tokens yet."""
    probe = subprocess.run([*exec_in_api, "gradlab", "token", "--help"], capture_output=True,
                           text=True, check=False, timeout=120)
    if probe.returncode != 0:
        return None
    created = subprocess.run([*exec_in_api, "gradlab", "token", "create", "--user", "deploy-test",
                              "--admin"], capture_output=True, text=True, check=False,
                             timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    return created.stdout.split()[-1]


def api_client(port: int, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)


# ---- a rendered container as `docker run` ---------------------------------------------------


def _quantity_bytes(quantity: str) -> str:
    """Kubernetes memory quantity -> docker's units (Gi -> g, Mi -> m)."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(quantity))
    assert match, f"unexpected quantity {quantity}"
    return match.group(1) + {"Ki": "k", "Mi": "m", "Gi": "g", None: ""}[match.group(2)]


def _environment(spec: dict[str, Any], objects: list[Manifest]) -> list[str]:
    """envFrom ConfigMaps, then env (values and Secret keys), as the kubelet resolves them."""
    def data(kind: str, name: str) -> dict[str, str]:
        found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert found, f"the container reads {kind} {name}, which the chart does not make"
        return found[0].get("data") or found[0].get("stringData") or {}

    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(data("ConfigMap", source["configMapRef"]["name"]))
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = data("Secret", ref["name"])[ref["key"]]
    return [f"--env={k}={v}" for k, v in env.items()]


def _volumes(pod: dict[str, Any], spec: dict[str, Any], claims: dict[str, Path]) -> list[str]:
    """emptyDirs as tmpfs (a memory one at /dev/shm as the shm size), claims as bind mounts."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args: list[str] = []
    for mount in spec.get("volumeMounts", []):
        volume, path = volumes[mount["name"]], mount["mountPath"]
        if "emptyDir" in volume:
            size = _quantity_bytes(volume["emptyDir"].get("sizeLimit", "1Gi"))
            args += [f"--shm-size={size}"] if path == "/dev/shm" else [
                f"--tmpfs={path}:rw,size={size},mode=1777"]
        else:
            claim = volume["persistentVolumeClaim"]["claimName"]
            mode = "ro" if mount.get("readOnly") else "rw"
            args.append(f"--volume={claims[claim]}:{path}:{mode}")
    return args


def _security(pod: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    pod_context, context = pod.get("securityContext", {}), spec.get("securityContext", {})
    args = [f"--user={pod_context['runAsUser']}:{pod_context['runAsGroup']}"]
    if "fsGroup" in pod_context:
        args.append(f"--group-add={pod_context['fsGroup']}")
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    args += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
    return args


def docker_run_argv(workload: Manifest, container_name: str, objects: list[Manifest], *,
                    name: str, network: str, claims: dict[str, Path],
                    publish: dict[int, int] | None = None, detach: bool = True) -> list[str]:
    """The `docker run` of one container of a rendered Deployment or Job: its image, command,
    args, environment, mounts, user and security settings, memory limit and ports."""
    pod = workload["spec"]["template"]["spec"]
    spec = next(c for c in pod["containers"] if c["name"] == container_name)
    assert spec["imagePullPolicy"] == "Never"  # images built here, never pulled
    argv = ["docker", "run", f"--name={name}", f"--network={network}"]
    argv += ["--detach"] if detach else ["--rm"]
    argv += _security(pod, spec) + _environment(spec, objects) + _volumes(pod, spec, claims)
    limits = spec.get("resources", {}).get("limits", {})
    if "memory" in limits:
        argv.append(f"--memory={_quantity_bytes(limits['memory'])}")
    for container_port, host_port in (publish or {}).items():
        argv.append(f"--publish=127.0.0.1:{host_port}:{container_port}")
    command = spec.get("command", [])
    if command:
        argv.append(f"--entrypoint={command[0]}")
    return argv + [spec["image"], *command[1:], *spec.get("args", [])]
