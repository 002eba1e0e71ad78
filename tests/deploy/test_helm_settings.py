"""Every gradlab container the chart makes accepts the GRADLAB_ variables it is given (the
shared ConfigMap and its own env): the settings kind its command builds lets them all pass
(docs/settings.md); the client's variables are refused by the schema before any pod starts."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest

from gradlab.settings import (
    ApiSettings,
    GradlabSettings,
    ServerSettings,
    WorkerSettings,
    readers,
)
from tests.deploy.chart import CHART, GPU_KEDA_INGRESS_HPA, Manifest, manifests, render

KIND_OF_VERB: dict[str, type[GradlabSettings]] = {
    "migrate": ServerSettings, "api": ApiSettings, "worker": WorkerSettings,
    "reaper": WorkerSettings, "data": WorkerSettings,
}
# Every server setting a values file may put in the ConfigMap (the schema keeps the others).
REFUSED_BY_SCHEMA = {"GRADLAB_DATABASE_URL", "GRADLAB_BROKER_URL", "GRADLAB_ADMIN_TOKEN",
                     "GRADLAB_AUTH_REQUIRED", "GRADLAB_GPU_SHARING", "GRADLAB_PROCESSES_PER_GPU"}
TYPED = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"][
    "properties"]
EVERY_SETTING = {name: "cpu" if TYPED.get(name, {}).get("type") == "string" else 60
                 for name in sorted(ApiSettings.names() | WorkerSettings.names())
                 if name not in REFUSED_BY_SCHEMA}


def gradlab_containers(objects: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            spec = o["spec"]["template"]["spec"]
            found += [(o["metadata"]["name"], c)
                      for c in spec.get("initContainers", []) + spec["containers"]
                      if c.get("args", [""])[0] == "gradlab"]
    return found


@pytest.mark.parametrize("values", [{}, GPU_KEDA_INGRESS_HPA, {"pgbouncer": {"enabled": True}}],
                         ids=["defaults", "gpu-keda-ingress-hpa", "pgbouncer"])
def test_every_container_accepts_the_settings_every_container_is_given(
    values: dict[str, Any],
) -> None:
    objects = manifests({**values, "settings": EVERY_SETTING})
    configmap = next(o for o in objects
                     if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings"))
    verbs = []
    for name, c in gradlab_containers(objects):
        environ = {e["name"]: "1" for e in c.get("env", [])}
        if c.get("envFrom"):
            environ |= configmap["data"]
        kind = KIND_OF_VERB[c["args"][1]]
        assert kind.unusable(environ) == [], (name, c["name"])
        verbs.append(c["args"][1])
    assert {"migrate", "api", "worker", "reaper"} <= set(verbs)


@pytest.mark.parametrize("name", sorted(set(readers()) - set(EVERY_SETTING)
                                        - REFUSED_BY_SCHEMA))
def test_the_schema_refuses_the_clients_variables(name: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render({"settings": {name: "x"}})
    assert name in str(refused.value)
