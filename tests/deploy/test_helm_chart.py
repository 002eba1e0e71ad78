"""The Helm chart, linted and rendered by Helm's Go SDK (helm-python-sdk), its core objects
validated against the Kubernetes 1.30 schemas (kubernetes-validate --strict), and what
matters asserted: GPUs, probes, non-root, the migration hook, the grace period, KEDA.

No Kubernetes cluster runs here: KEDA's objects (CRDs) are checked field by field, and
tests/deploy/test_docker_stack.py runs the rendered api and worker containers with Docker.
"""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.deploy.chart import (
    CHART,
    GPU_KEDA_INGRESS_HPA,
    KUBE_VERSION,
    Manifest,
    container,
    find,
    kinds,
    manifests,
    render,
)

VALUE_SETS = {"defaults": {}, "gpu-keda-ingress-hpa": GPU_KEDA_INGRESS_HPA,
              "pgbouncer": {"pgbouncer": {"enabled": True}}}
HOOK_ANNOTATIONS = {"helm.sh/hook": "pre-install,pre-upgrade",
                    "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}


@pytest.fixture(scope="module")
def default_objects() -> list[Manifest]:
    return manifests()


@pytest.fixture(scope="module")
def gpu_objects() -> list[Manifest]:
    return manifests(GPU_KEDA_INGRESS_HPA)


def pod_templates(objects: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_finds_no_error_or_warning(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info) is only "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_core_object_is_valid_kubernetes_1_30(values: dict[str, Any]) -> None:
    core = [o for o in manifests(values) if not o["apiVersion"].startswith("keda.sh/")]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_a_wrong_object_would_be_refused_by_the_validator(default_objects: list[Manifest]) -> None:
    # The check above has teeth: a misspelt field fails strict validation.
    broken = copy.deepcopy(find(default_objects, "Deployment", "-api"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_defaults_make_the_release_with_external_postgres_and_redis(
    default_objects: list[Manifest],
) -> None:
    assert kinds(default_objects) == sorted([
        "ConfigMap", "Deployment", "Deployment", "Deployment", "Job", "NetworkPolicy",
        "NetworkPolicy", "PodDisruptionBudget", "Secret", "Secret", "Service",
        "ServiceAccount", "ServiceAccount",
    ])
    secret = find(default_objects, "Secret", "-connections")
    assert set(secret["stringData"]) == {"database-url", "broker-url"}
    for obj in default_objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "gradlab"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "gradlab"
    assert "WARNING: database.url is the chart's example" in render()[
        "gradlab/templates/NOTES.txt"]


def test_gpu_values_add_hpa_ingress_and_keda(gpu_objects: list[Manifest]) -> None:
    added = {"HorizontalPodAutoscaler", "Ingress", "ScaledObject", "TriggerAuthentication"}
    assert added <= set(kinds(gpu_objects))


def test_worker_requests_its_gpus_on_the_gpu_pool(gpu_objects: list[Manifest]) -> None:
    worker = find(gpu_objects, "Deployment", "-worker")
    pod = worker["spec"]["template"]["spec"]
    resources = container(worker, "worker")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 2
    assert resources["requests"]["nvidia.com/gpu"] == 2
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    # Long enough to finish an epoch and write its checkpoint after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert container(worker, "worker")["args"] == ["gradlab", "worker"]
    # The data from the claim, read-only, no download.
    assert "initContainers" not in pod
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"] == {"claimName": "cifar100", "readOnly": True}
    assert "replicas" not in worker["spec"]  # KEDA owns the count


def test_cpu_worker_variant_requests_no_gpu() -> None:
    worker = find(manifests({"worker": {"gpu": {"enabled": False}, "concurrency": 1}}),
                  "Deployment", "-worker")
    spec = container(worker, "worker")
    assert "nvidia.com/gpu" not in str(spec["resources"])
    assert {"name": "GRADLAB_DEVICE", "value": "cpu"} in spec["env"]
    assert spec["args"] == ["gradlab", "worker", "--concurrency", "1"]


def test_api_probes_liveness_and_readiness(default_objects: list[Manifest]) -> None:
    api = container(find(default_objects, "Deployment", "-api"), "api")
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert api["args"][:2] == ["gradlab", "api"]
    service = find(default_objects, "Service", "-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_pod_is_non_root_read_only_and_without_capabilities(
    values: dict[str, Any],
) -> None:
    templates = pod_templates(manifests(values))
    # api, worker, reaper, migrations (and the optional PgBouncer)
    assert len(templates) == 4 + bool(values.get("pgbouncer", {}).get("enabled"))
    for name, pod in templates:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for spec in pod["containers"] + pod.get("initContainers", []):
            context = spec["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, spec["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, spec["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, spec["name"])
            tmp = [m for m in spec["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, (name, spec["name"])
            assert "resources" in spec and spec["resources"]["limits"], (name, spec["name"])


def test_migrations_are_a_pre_install_and_pre_upgrade_hook(default_objects: list[Manifest]) -> None:
    job = find(default_objects, "Job", "-migrate")
    annotations = job["metadata"]["annotations"]
    assert {k: annotations[k] for k in HOOK_ANNOTATIONS} == HOOK_ANNOTATIONS
    assert annotations["helm.sh/hook-weight"] == "0"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    migrate = pod["containers"][0]
    assert migrate["args"] == ["gradlab", "migrate"]
    assert migrate["image"].startswith("gradlab-api:")  # no PyTorch needed
    # What the Job reads exists before it: hooks of a lower weight, not release objects.
    for kind in ("ServiceAccount", "Secret"):
        dependency = find(default_objects, kind, "-migrate")
        assert dependency["metadata"]["annotations"]["helm.sh/hook"] == HOOK_ANNOTATIONS[
            "helm.sh/hook"]
        assert int(dependency["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    assert pod["serviceAccountName"].endswith("-migrate")
    url = migrate["env"][0]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "demo-gradlab-migrate", "key": "database-url"}


def test_migration_job_reads_an_existing_secret_directly(gpu_objects: list[Manifest]) -> None:
    job = find(gpu_objects, "Job", "-migrate")
    url = job["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "gradlab-db", "key": "url"}
    assert not [o for o in gpu_objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith(
        "-migrate")]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_reaper_runs_exactly_once(values: dict[str, Any]) -> None:
    objects = manifests(values)
    reaper = find(objects, "Deployment", "-reaper")
    assert reaper["spec"]["replicas"] == 1
    assert reaper["spec"]["strategy"] == {"type": "Recreate"}  # never two during a rollout
    assert container(reaper, "reaper")["args"][:2] == ["gradlab", "reaper"]
    assert "nvidia.com/gpu" not in str(container(reaper, "reaper")["resources"])
    scaled = [o["spec"]["scaleTargetRef"]["name"] for o in objects
              if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert reaper["metadata"]["name"] not in scaled


def test_keda_scales_workers_on_queued_and_running_runs_to_zero(
    gpu_objects: list[Manifest],
) -> None:
    scaled = find(gpu_objects, "ScaledObject", "-worker")
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "demo-gradlab-worker"}
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == 4
    assert spec["cooldownPeriod"] >= 60
    [trigger] = spec["triggers"]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    # Runs in PostgreSQL, not the Redis list; two GPUs per pod, so ceil(runs / 2) pods.
    assert "FROM runs WHERE status IN ('queued', 'running')" in query
    assert "CEIL(COUNT(*)::numeric / 2)" in query
    assert trigger["metadata"]["targetQueryValue"] == "1"
    assert trigger["metadata"]["activationTargetQueryValue"] == "0"
    auth = find(gpu_objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "gradlab-db", "key": "url"}]
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300


def test_keda_reads_a_driverless_url_from_the_charts_secret() -> None:
    objects = manifests({"keda": {"enabled": True},
                         "database": {"url": "postgresql+psycopg://u:p@db:5432/gradlab"}})
    secret = find(objects, "Secret", "-connections")["stringData"]
    assert secret["keda-connection"] == "postgresql://u:p@db:5432/gradlab"
    assert secret["database-url"] == "postgresql+psycopg://u:p@db:5432/gradlab"
    auth = find(objects, "TriggerAuthentication", "-postgresql")
    assert auth["spec"]["secretTargetRef"][0]["key"] == "keda-connection"


def test_hpa_and_ingress_front_the_api(gpu_objects: list[Manifest]) -> None:
    api = find(gpu_objects, "Deployment", "-api")
    assert "replicas" not in api["spec"]  # the HPA owns the count
    hpa = find(gpu_objects, "HorizontalPodAutoscaler", "-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    ingress = find(gpu_objects, "Ingress", "-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "demo-gradlab-api", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"secretName": "gradlab-tls",
                                       "hosts": ["gradlab.example.com"]}]


def test_connection_urls_come_from_secrets_and_settings_from_the_configmap(
    gpu_objects: list[Manifest],
) -> None:
    secret = find(gpu_objects, "Secret", "-connections")["stringData"]
    assert set(secret) == {"broker-url", "admin-token"}  # the database is in gradlab-db
    settings = find(gpu_objects, "ConfigMap", "-settings")
    assert settings["data"]["GRADLAB_AUTH_REQUIRED"] == "true"
    assert settings["data"]["GRADLAB_LEASE_SECONDS"] == "300"
    assert not [k for k in settings["data"] if "URL" in k or "TOKEN" in k]
    for name in ("-api", "-worker", "-reaper"):
        spec = container(find(gpu_objects, "Deployment", name), name[1:])
        assert spec["envFrom"] == [{"configMapRef": {"name": "demo-gradlab-settings"}}]
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in spec["env"]}
        assert env["GRADLAB_DATABASE_URL"] == {"name": "gradlab-db", "key": "url"}
        assert env["GRADLAB_BROKER_URL"] == {"name": "demo-gradlab-connections",
                                             "key": "broker-url"}
    api_env = container(find(gpu_objects, "Deployment", "-api"), "api")["env"]
    assert {"name": "GRADLAB_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "demo-gradlab-connections", "key": "admin-token"}}} in api_env


def test_a_new_setting_needs_no_chart_change_and_rolls_the_pods() -> None:
    before = find(manifests(), "Deployment", "-worker")
    objects = manifests({"settings": {"GRADLAB_CHECKPOINT_SECONDS": 120}})
    assert find(objects, "ConfigMap", "-settings")["data"]["GRADLAB_CHECKPOINT_SECONDS"] == "120"
    after = find(objects, "Deployment", "-worker")

    def checksum(deployment: Manifest) -> str:
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]

    assert checksum(before) != checksum(after)


def test_network_policies_let_in_only_the_api_and_metrics_ports(
    default_objects: list[Manifest],
) -> None:
    api = find(default_objects, "NetworkPolicy", "-api")["spec"]
    assert api["policyTypes"] == ["Ingress", "Egress"]
    assert api["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    workers = find(default_objects, "NetworkPolicy", "-workers")["spec"]
    assert workers["policyTypes"] == ["Ingress", "Egress"]
    assert workers["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    assert workers["podSelector"]["matchExpressions"][0]["values"] == [
        "worker", "reaper", "migrations"]
    ports = {p["port"] for rule in workers["egress"] for p in rule["ports"]}
    assert {53, 5432, 6379} <= ports


def test_workers_serve_metrics_on_a_named_port_prometheus_finds(
    default_objects: list[Manifest],
) -> None:
    worker = find(default_objects, "Deployment", "-worker")
    spec = container(worker, "worker")
    assert spec["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert {"name": "GRADLAB_WORKER_METRICS_PORT", "value": "9100"} in spec["env"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"


def test_metrics_off_leaves_workers_without_ports_or_ingress() -> None:
    objects = manifests({"worker": {"metrics": {"enabled": False}}})
    spec = container(find(objects, "Deployment", "-worker"), "worker")
    assert "ports" not in spec
    assert "GRADLAB_WORKER_METRICS_PORT" not in {e["name"] for e in spec["env"]}
    assert "ingress" not in find(objects, "NetworkPolicy", "-workers")["spec"]


def test_s3_credentials_come_from_the_named_secret_for_api_and_workers() -> None:
    objects = manifests({"checkpoints": {"s3CredentialsSecret": "ckpt-s3"},
                         "settings": {"GRADLAB_CHECKPOINT_STORE": "s3://bucket/gradlab"}})
    for name in ("-api", "-worker"):
        env = {e["name"]: e.get("valueFrom") for e in
               container(find(objects, "Deployment", name), name[1:])["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"secretKeyRef": {"name": "ckpt-s3", "key": key}}
    default_env = container(find(manifests(), "Deployment", "-worker"), "worker")["env"]
    assert "AWS_ACCESS_KEY_ID" not in {e["name"] for e in default_env}


BAD_VALUES = {
    "gpu count as text": ({"worker": {"gpu": {"count": "two"}}}, "/worker/gpu/count"),
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "unknown worker key": ({"worker": {"gpus": 2}}, "gpus"),
    "a URL in the ConfigMap": ({"settings": {"GRADLAB_DATABASE_URL": "postgresql://x"}},
                               "GRADLAB_DATABASE_URL"),
    "a setting without the prefix": ({"settings": {"LEASE_SECONDS": 10}}, "LEASE_SECONDS"),
    "lease below 10 s": ({"settings": {"GRADLAB_LEASE_SECONDS": 1}}, "GRADLAB_LEASE_SECONDS"),
    "pull policy": ({"image": {"api": {"repository": "x", "pullPolicy": "Sometimes"}}},
                    "pullPolicy"),
    "not a PostgreSQL URL": ({"database": {"url": "mysql://db/gradlab"}}, "/database/url"),
    "metrics port below 1024": ({"worker": {"metrics": {"port": 80}}}, "/worker/metrics/port"),
    "zero API processes": ({"api": {"processes": 0}}, "/api/processes"),
    "short grace period": ({"worker": {"terminationGracePeriodSeconds": 5}},
                           "terminationGracePeriodSeconds"),
    "ingress path": ({"api": {"ingress": {"hosts": [{"host": "h", "paths": [
        {"path": "api", "pathType": "Prefix"}]}]}}}, "path"),
}


@pytest.mark.parametrize(("values", "named"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_the_schema_refuses_bad_values_naming_them(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    assert named in str(refused.value)
