"""deploy/k8s, checked without a cluster: each overlay renders (kubectl's built-in kustomize, offline),
the RayJob and RayService validate against KubeRay v1.7.0's CRD schemas with unknown fields refused,
core objects validate against Kubernetes' own schemas (kubernetes-validate), the RayService serves what
serve_config.yaml serves, and the RayJob runs an experiment that is in the image with overrides that
pneumo's config accepts.

The CRDs come from ../shared/kuberay/crds beside the repository (CI clones it with shared/ there).
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from pneumo.config import load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CRDS = REPO.parent / "shared" / "kuberay" / "crds"
OVERLAYS = ["cpu", "gpu"]
IMAGE_ROOT = "/opt/pneumo"  # where the Containerfile puts the code, experiments/ among it
RAY_KINDS = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
KUBERNETES_VERSION = "1.32.0"  # core objects are checked against this Kubernetes release's schemas
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a 1 MB CRD in ~1 s instead of ~20 s


@functools.cache
def render(folder: str) -> tuple[dict, ...]:
    """`kubectl kustomize deploy/k8s/<folder>` as parsed objects."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomize overlays in deploy/k8s were not rendered or checked")
    result = subprocess.run(["kubectl", "kustomize", str(K8S / folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> list[dict]:
    return [doc for doc in render(f"overlays/{overlay}") if doc["kind"] == kind]


def the(overlay: str, kind: str) -> dict:
    (found,) = objects(overlay, kind)
    return found


def refuse_unknown_fields(schema):
    """A copy of an OpenAPI schema where every object with `properties` (and no
    x-kubernetes-preserve-unknown-fields) refuses properties it does not name, as the API server does."""
    if isinstance(schema, list):
        return [refuse_unknown_fields(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: refuse_unknown_fields(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict.setdefault("additionalProperties", False)
    return strict


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    path = CRDS / RAY_KINDS[kind]
    if not path.exists():
        pytest.skip(f"{path} is missing (KubeRay's CRDs, cloned beside the repository as shared/): not validated")
    crd = yaml.load(path.read_text(), Loader=FAST_LOADER)
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return jsonschema.Draft7Validator(refuse_unknown_fields(v1["schema"]["openAPIV3Schema"]))


def errors(kind: str, document: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in crd_validator(kind).iter_errors(document)
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("kind", sorted(RAY_KINDS))
def test_ray_objects_match_kuberay_crd_schema(overlay, kind):
    document = the(overlay, kind)
    assert errors(kind, document) == []
    cluster = document["spec"]["rayClusterSpec" if kind == "RayJob" else "rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"] == {"mode": "token", "secretName": "pneumo-ray-auth"}
    assert len(document["metadata"]["name"]) <= 47, "KubeRay's limit for RayJob and RayService names"


def test_unknown_fields_are_refused():
    """The strict schema catches a misspelt field, at the top and deep inside a pod template."""
    job = copy.deepcopy(the("cpu", "RayJob"))
    job["spec"]["shutdownAfterJobFinish"] = True
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    found = errors("RayJob", job)
    assert len(found) == 2, found
    assert any(line.startswith("spec:") and "'shutdownAfterJobFinish'" in line for line in found), found
    assert any("containers.0:" in line and "'envFrm'" in line for line in found), found


def test_the_ray_version_is_the_locked_one():
    locked = re.search(r"^ray==(\S+)$", (REPO / "requirements.lock").read_text(), re.MULTILINE).group(1)
    for kind in RAY_KINDS:
        spec = the("cpu", kind)["spec"]
        assert (spec.get("rayClusterSpec") or spec.get("rayClusterConfig"))["rayVersion"] == locked


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_kubernetes_schemas(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    core = [doc for doc in render(f"overlays/{overlay}") if doc["kind"] not in RAY_KINDS]
    assert {doc["kind"] for doc in core} == {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "Deployment", "StatefulSet"
    }  # fmt: skip
    for document in core:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_refuses_an_unknown_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = copy.deepcopy(the("cpu", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_rayservice_serves_what_serve_config_yaml_serves():
    """serveConfigV2 is serve_config.yaml with the proxy listening beyond the pod's loopback."""
    local = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    for overlay in OVERLAYS:
        cluster = yaml.safe_load(the(overlay, "RayService")["spec"]["serveConfigV2"])
        assert cluster["applications"] == local["applications"]
        assert cluster["proxy_location"] == local["proxy_location"]
        assert cluster["http_options"] == {**local["http_options"], "host": "0.0.0.0"}


def configmap_values(overlay: str) -> dict[str, str]:
    return the(overlay, "ConfigMap")["data"]


def entrypoint_config(overlay: str) -> tuple[Path, list[str]]:
    """The experiment file (in this checkout) and the overrides the RayJob's entrypoint gives `pneumo run`,
    its ${VAR:?...} taken from the ConfigMap the head pod reads."""
    values = configmap_values(overlay)
    entrypoint = the(overlay, "RayJob")["spec"]["entrypoint"]
    expanded = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda match: values[match.group(1)], entrypoint)
    program, command, experiment, *overrides = shlex.split(expanded)
    assert (program, command) == ("pneumo", "run")
    assert experiment.startswith(f"{IMAGE_ROOT}/experiments/"), experiment
    return REPO / Path(experiment).relative_to(IMAGE_ROOT), overrides


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_runs_an_experiment_in_the_image_with_valid_overrides(overlay):
    experiment, overrides = entrypoint_config(overlay)
    assert experiment.is_file(), f"{experiment} is not in the repository, so not in the image"
    assert (
        "experiments/" in (REPO / ".dockerignore").read_text()
        and "COPY experiments/" in (REPO / "Containerfile").read_text()
    )
    cfg = load_config([str(experiment)], overrides)  # a key pneumo does not know fails here
    assert cfg.scaling.storage_path == configmap_values(overlay)["PNEUMO_STORAGE_PATH"]
    job = the(overlay, "RayJob")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert cfg.scaling.use_gpu == (overlay == "gpu")


def test_a_missing_configmap_key_stops_the_entrypoint_with_one_line_naming_it():
    """The entrypoint runs under /bin/sh on the head pod: without PNEUMO_STORAGE_PATH it stops before
    pneumo starts, with one line that names the variable and the ConfigMap."""
    entrypoint = the("cpu", "RayJob")["spec"]["entrypoint"].replace("pneumo run", "echo pneumo run", 1)
    env = {"PATH": "/usr/bin:/bin", "PNEUMO_DATA_PATH": "/data/x", "PNEUMO_CACHE_DIR": "/data/c"}
    result = subprocess.run(["/bin/sh", "-c", entrypoint], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "PNEUMO_STORAGE_PATH" in result.stderr and "ConfigMap pneumo-config" in result.stderr


def ray_containers(document: dict) -> list[dict]:
    spec = document["spec"]
    cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"]["spec"]["containers"][0] for group in groups]


def env_sources(container: dict) -> set[str]:
    return {(source.get("configMapRef") or source.get("secretRef"))["name"] for source in container.get("envFrom", [])}


def test_tokens_and_tracking_come_from_secrets_and_the_configmap():
    for kind in RAY_KINDS:
        for container in ray_containers(the("cpu", kind)):
            assert {"pneumo-config", "pneumo-tracking"} <= env_sources(container)
            assert not container.get("env"), "settings come from the ConfigMap and Secrets, not the manifest"
    for container in ray_containers(the("cpu", "RayService")):
        assert "pneumo-serve" in env_sources(container), "every Serve replica checks PNEUMO_SERVE_TOKEN"


def test_gpu_overlay_gives_workers_gpus_and_the_cuda_image():
    for kind in RAY_KINDS:
        cpu_images = {container["image"] for container in ray_containers(the("cpu", kind))}
        gpu_containers = ray_containers(the("gpu", kind))
        assert cpu_images == {"ghcr.io/OWNER/pneumo:cpu"}
        assert {container["image"] for container in gpu_containers} == {"ghcr.io/OWNER/pneumo:cuda"}
        gpu_workers = [c for c in gpu_containers[1:] if c["resources"]["limits"].get("nvidia.com/gpu") == "1"]
        assert gpu_workers, f"{kind}: no worker group asks for nvidia.com/gpu"
    service_groups = the("gpu", "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [group["groupName"] for group in service_groups] == ["cpu", "gpu"], "GPU group added at the end"
    assert service_groups[1]["minReplicas"] == 0


def test_mlflow_server_uses_postgres_proxied_artifacts_and_allowed_hosts():
    (mlflow,) = [doc for doc in objects("cpu", "Deployment") if doc["metadata"]["name"] == "mlflow"]
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in args if arg.startswith("--"))
    assert options["backend-store-uri"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/mlflow" in options["backend-store-uri"]
    assert "artifacts-destination" in options and "no-serve-artifacts" not in options
    service_name = "mlflow.pneumo.svc.cluster.local:5000"
    assert service_name in options["allowed-hosts"].split(",")
    assert configmap_values("cpu")["MLFLOW_TRACKING_URI"] == f"http://{service_name}"


def test_prometheusrule_holds_the_alert_rules_of_deploy_prometheus():
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "pneumo-alerts.yml").read_text())
    monitoring = render("monitoring")
    (rule,) = [doc for doc in monitoring if doc["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == rules["groups"]
    (monitor,) = [doc for doc in monitoring if doc["kind"] == "PodMonitor"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    for kind in RAY_KINDS:
        for container in ray_containers(the("cpu", kind)):
            assert {"name": "metrics", "containerPort": 8080} in container["ports"]


def test_each_part_applies_alone_by_its_component_label():
    """`kubectl apply -k OVERLAY -l app.kubernetes.io/component=X` applies tracking, then train, then serve
    (docs/how-to/kubernetes.md): every object but the Namespace carries one of the three."""
    parts: dict[str, set[str]] = {}
    for document in render("overlays/cpu"):
        if document["kind"] == "Namespace":
            continue
        component = document["metadata"]["labels"]["app.kubernetes.io/component"]
        parts.setdefault(component, set()).add(f"{document['kind']}/{document['metadata']['name']}")
    assert parts == {
        "tracking": {"ConfigMap/pneumo-config", "Service/postgres", "StatefulSet/postgres", "Service/mlflow",
                     "Deployment/mlflow"},
        "train": {"PersistentVolumeClaim/pneumo-data", "RayJob/pneumo-train"},
        "serve": {"RayService/pneumo-serve"},
    }  # fmt: skip
