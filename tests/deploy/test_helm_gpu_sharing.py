"""The chart's worker follows the GPU sharing setting (worker.gpu.sharing, processesPerGpu):
GRADLAB_GPU_SHARING and GRADLAB_PROCESSES_PER_GPU in its environment, from which `gradlab
worker` starts GPUs x processes children, and KEDA counts that many runs per pod."""

from __future__ import annotations

import copy
import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.deploy.chart import (
    GPU_KEDA_INGRESS_HPA,
    KUBE_VERSION,
    Manifest,
    container,
    find,
    manifests,
    render,
)

PROCESSES = {"worker": {"gpu": {"sharing": "processes", "processesPerGpu": 3}}}


def _with(values: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(values)
    merged["worker"]["gpu"].update(extra["worker"]["gpu"])
    return merged


def _worker_env(objects: list[Manifest]) -> dict[str, str | None]:
    worker = container(find(objects, "Deployment", "-worker"), "worker")
    return {e["name"]: e.get("value") for e in worker["env"]}


def _runs_per_pod(objects: list[Manifest]) -> int:
    query = find(objects, "ScaledObject", "-worker")["spec"]["triggers"][0]["metadata"]["query"]
    found = re.search(r"CEIL\(COUNT\(\*\)::numeric / (\d+)\)", query)
    assert found is not None, query
    return int(found[1])


def test_the_worker_shares_its_gpus_by_packs_unless_told_otherwise() -> None:
    env = _worker_env(manifests(GPU_KEDA_INGRESS_HPA))
    assert env["GRADLAB_GPU_SHARING"] == "packs"
    assert env["GRADLAB_PROCESSES_PER_GPU"] == "4"  # read only with processes
    assert _runs_per_pod(manifests(GPU_KEDA_INGRESS_HPA)) == 2  # one process per GPU, 2 GPUs


def test_processes_sharing_reaches_the_worker_and_keda_counts_its_processes() -> None:
    objects = manifests(_with(GPU_KEDA_INGRESS_HPA, PROCESSES))
    env = _worker_env(objects)
    assert (env["GRADLAB_GPU_SHARING"], env["GRADLAB_PROCESSES_PER_GPU"]) == ("processes", "3")
    worker = container(find(objects, "Deployment", "-worker"), "worker")
    assert worker["args"] == ["gradlab", "worker"]  # it counts GPUs x processes itself
    assert _runs_per_pod(objects) == 2 * 3
    for obj in objects:
        if not obj["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_an_explicit_concurrency_is_what_keda_counts() -> None:
    values = _with(GPU_KEDA_INGRESS_HPA, PROCESSES)
    values["worker"]["concurrency"] = 5
    objects = manifests(values)
    assert container(find(objects, "Deployment", "-worker"), "worker")["args"] == [
        "gradlab", "worker", "--concurrency", "5"]
    assert _runs_per_pod(objects) == 5


def test_a_cpu_worker_gets_no_gpu_sharing_setting() -> None:
    env = _worker_env(manifests({"worker": {"gpu": {"enabled": False}}}))
    assert "GRADLAB_GPU_SHARING" not in env and env["GRADLAB_DEVICE"] == "cpu"


BAD = {
    "unknown sharing": ({"worker": {"gpu": {"sharing": "threads"}}}, "/worker/gpu/sharing"),
    "no processes": ({"worker": {"gpu": {"processesPerGpu": 0}}},
                     "/worker/gpu/processesPerGpu"),
    "the setting in the ConfigMap": ({"settings": {"GRADLAB_GPU_SHARING": "processes"}},
                                     "GRADLAB_GPU_SHARING"),
    "processes in the ConfigMap": ({"settings": {"GRADLAB_PROCESSES_PER_GPU": 2}},
                                   "GRADLAB_PROCESSES_PER_GPU"),
}


@pytest.mark.parametrize(("values", "named"), BAD.values(), ids=BAD.keys())
def test_bad_sharing_values_are_refused_naming_them(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    assert named in str(refused.value)
