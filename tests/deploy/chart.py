"""Render the Helm chart with Helm's own Go SDK (helm-python-sdk: no helm binary, no cluster)
and pick objects out of the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "gradlab"
RELEASE = "demo"
NAMESPACE = "ml"
KUBE_VERSION = "1.30.0"

Manifest = dict[str, Any]

# Values a GPU cluster would use: every optional object on.
GPU_KEDA_INGRESS_HPA: dict[str, Any] = {
    "image": {"api": {"repository": "registry.example.com/gradlab-api", "tag": "0.1.0"},
              "worker": {"repository": "registry.example.com/gradlab-worker", "tag": "0.1.0"}},
    "database": {"existingSecret": "gradlab-db", "existingSecretKey": "url"},
    "broker": {"url": "redis://redis.data.svc:6379/0"},
    "auth": {"adminToken": "not-a-real-token"},
    "api": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "gradlab.example.com",
                       "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "gradlab-tls", "hosts": ["gradlab.example.com"]}],
        },
    },
    "worker": {
        "gpu": {"enabled": True, "count": 2},
        "runtimeClassName": "nvidia",
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "data": {"existingClaim": "cifar100"},
    },
    "keda": {"enabled": True, "maxReplicaCount": 4},
}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce for an install."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every rendered object (NOTES.txt aside)."""
    found: list[Manifest] = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def find(objects: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    """The one object of ``kind`` whose name ends with ``suffix``."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    names = [o["metadata"]["name"] for o in matches]
    assert len(matches) == 1, f"{len(matches)} {kind} named *{suffix}: {names}"
    return matches[0]


def kinds(objects: list[Manifest]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(deployment: Manifest, name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)
