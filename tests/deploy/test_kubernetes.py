"""deploy/kubernetes: every manifest parses and names a known apiVersion/kind with its required
fields, validates against Kubernetes' own schemas where kubernetes-validate is installed, and the
pieces agree with each other and with the proxy (probes, secret paths, drain time, config)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy_configs import check, with_secrets_in
from tests.support.dockerfile import final_stage, instructions
from tests.support.manifests import (
    KUSTOMIZATION,
    SECRET_TEMPLATE,
    deployment,
    find,
    kubernetes_files,
    kubernetes_objects,
    load_all,
)
from vapi_proxy.cli import build_parser
from vapi_proxy.cli.serve import uvicorn_kwargs
from vapi_proxy.settings import Settings

KNOWN = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "Ingress": "networking.k8s.io/v1",
}
REQUIRED_SPEC = {
    "Deployment": ["replicas", "selector", "template"],
    "Service": ["selector", "ports"],
    "HorizontalPodAutoscaler": ["scaleTargetRef", "minReplicas", "maxReplicas", "metrics"],
    "PodDisruptionBudget": ["selector"],
    "Ingress": ["rules"],
}
LABELS = {"app.kubernetes.io/name": "vapi-proxy", "app.kubernetes.io/component": "proxy"}


def _container() -> dict[str, Any]:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    return container


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return pod


def _drain_seconds() -> float:
    args = build_parser().parse_args(["serve"])
    return float(uvicorn_kwargs(args, Settings())["timeout_graceful_shutdown"])


@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda p: p.name)
def test_manifest_structure(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        kind = doc.get("kind")
        assert kind in KNOWN, f"{path.name}: unexpected kind {kind!r}"
        assert doc.get("apiVersion") == KNOWN[kind], f"{path.name}: apiVersion of {kind}"
        name = doc.get("metadata", {}).get("name")
        assert isinstance(name, str) and name, f"{path.name}: metadata.name"
        # The kustomization sets the namespace; a hard-coded one would fight it.
        assert "namespace" not in doc["metadata"], path.name
        for field in REQUIRED_SPEC.get(kind, []):
            assert field in doc.get("spec", {}), f"{path.name}: spec.{field}"


@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path) -> None:
    # kubernetes-validate bundles the OpenAPI schemas of each Kubernetes release (offline).
    validator = pytest.importorskip("kubernetes_validate")
    for doc in load_all(path):
        validator.validate(doc, validator.latest_version(), strict=True)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    # Guards the test above against a validator that accepts anything.
    validator = pytest.importorskip("kubernetes_validate")
    broken = copy.deepcopy(deployment())
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, validator.latest_version(), strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    (kustomization,) = load_all(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in kubernetes_files()}
    assert listed == on_disk - {SECRET_TEMPLATE.name}
    # The image the Deployment names is the one the kustomization retags.
    assert _container()["image"].split(":")[0] == kustomization["images"][0]["name"]


def test_secret_is_a_template_with_placeholders() -> None:
    (secret,) = load_all(SECRET_TEMPLATE)
    assert "data" not in secret, "no base64 values: stringData placeholders only"
    values = secret["stringData"]
    for key in ("vapi_api_key", "vapi_webhook_secret"):
        assert values[key].startswith("REPLACE-ME"), key
    assert "REPLACE-ME" in values["ledger_url"]


def test_deployment_replicas_probes_and_resources() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == LABELS
    assert spec["template"]["metadata"]["labels"] == LABELS
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    readiness = container["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    # /readyz may spend 2 s on the ledger and 2 s on the limits store before answering 503.
    assert readiness["timeoutSeconds"] >= 4
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8080)
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])  # the HPA needs the CPU request
    assert "memory" in resources["limits"]


def test_deployment_runs_the_image_command() -> None:
    stage = final_stage(instructions())
    cmd = [i for i in stage if i.keyword == "CMD"][-1].exec_form()
    container = _container()
    assert "command" not in container, "keep the image's ENTRYPOINT"
    assert container["args"] == cmd


def test_pod_is_non_root_with_a_read_only_root() -> None:
    pod = _pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = _container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in _container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        if not mount.get("readOnly"):
            # Writable only where needed, and never the image's own files.
            assert "emptyDir" in volume, mount
            assert mount["mountPath"] == "/tmp"  # noqa: S108 (the pod's path, only compared)


def test_key_from_a_secret_file_and_config_from_the_configmap() -> None:
    container = _container()
    env = {e["name"]: e for e in container["env"]}
    key_file = Path(env["VAPI_API_KEY_FILE"]["value"])
    assert "VAPI_API_KEY" not in env
    volumes = {v["name"]: v for v in _pod()["volumes"]}
    mounts = {Path(m["mountPath"]): m for m in container["volumeMounts"]}
    secret_mount = mounts[key_file.parent]
    secret_volume = volumes[secret_mount["name"]]["secret"]
    (secret,) = load_all(SECRET_TEMPLATE)
    assert secret_volume["secretName"] == secret["metadata"]["name"]
    items = {i["path"]: i["key"] for i in secret_volume["items"]}
    assert items[key_file.name] in secret["stringData"]
    for entry in env.values():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
    config_mount = mounts[Path("/etc/vapi-proxy")]
    config_volume = volumes[config_mount["name"]]["configMap"]
    configmap = find("ConfigMap")
    assert config_volume["name"] == configmap["metadata"]["name"]
    assert "proxy.yaml" in configmap["data"]
    assert "/etc/vapi-proxy/proxy.yaml" in container["args"]


def test_grace_period_covers_pre_stop_and_drain() -> None:
    pod = _pod()
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + _drain_seconds()


def test_service_hpa_and_pdb_point_at_the_pods() -> None:
    service = find("Service")
    assert service["spec"]["selector"] == LABELS
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    hpa = find("HorizontalPodAutoscaler")["spec"]
    target = deployment()
    assert hpa["scaleTargetRef"] == {
        "apiVersion": target["apiVersion"],
        "kind": "Deployment",
        "name": target["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    pdb = find("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == LABELS
    assert pdb["minAvailable"] < hpa["minReplicas"], "a PDB as large as the floor blocks drains"


def test_no_literal_secrets_in_the_applied_manifests() -> None:
    for path, doc in kubernetes_objects():
        if path == SECRET_TEMPLATE:
            continue
        assert doc["kind"] != "Secret", path.name
        text = yaml.safe_dump(doc)
        assert "REPLACE-ME" not in text, path.name
        assert "VAPI_API_KEY:" not in text, path.name


def test_configmap_config_passes_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    container = _container()
    env = {e["name"]: e for e in container["env"]}
    secrets_dir = str(Path(env["VAPI_API_KEY_FILE"]["value"]).parent)
    text = with_secrets_in(find("ConfigMap")["data"]["proxy.yaml"], secrets_dir, tmp_path / "s")
    config = tmp_path / "proxy.yaml"
    config.write_text(text, encoding="utf-8")
    # The pod gets the ledger URL (with its password) from the Secret.
    (secret,) = load_all(SECRET_TEMPLATE)
    overrides = {
        "VAPI_PROXY__LEDGER__URL": secret["stringData"]["ledger_url"],
        "VAPI_PROXY__LIMITS__BACKEND": secret["stringData"]["limits_backend"],
    }
    code = check(config, monkeypatch, overrides)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OK, 1 profile(s)" in out


def test_kustomize_renders_the_set() -> None:
    # kubectl's built-in kustomize works offline; it is optional on a developer's machine.
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZATION.parent)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == sorted(d["kind"] for p, d in kubernetes_objects() if p != SECRET_TEMPLATE)
    (kustomization,) = load_all(KUSTOMIZATION)
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"], doc["kind"]
    (deployed,) = (doc for doc in rendered if doc["kind"] == "Deployment")
    image = deployed["spec"]["template"]["spec"]["containers"][0]["image"]
    wanted = kustomization["images"][0]
    assert image == f"{wanted['newName']}:{wanted['newTag']}"


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(find("ConfigMap")["data"]["proxy.yaml"])
    return config


def test_metrics_have_their_own_port_that_nothing_public_routes_to() -> None:
    # Issue 13.6: behind the Service and the Ingress every caller's TCP peer is in-cluster, so
    # metrics on the API port were one misjudged address away from the public.
    port = _config()["metrics"]["port"]
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert ports["metrics"] == port and ports["http"] != port
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    service = find("Service")
    for exposed in service["spec"]["ports"]:
        assert exposed["targetPort"] not in ("metrics", port), exposed
    service_ports = {p["name"] for p in service["spec"]["ports"]} | {
        p["port"] for p in service["spec"]["ports"]
    }
    ingress = find("Ingress")
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends, "the Ingress routes somewhere"
    for backend in backends:
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"].get("name", backend["port"].get("number")) in service_ports
    assert "defaultBackend" not in ingress["spec"]


def test_configmap_trusts_only_the_balancers_header() -> None:
    auth = _config()["auth"]
    assert auth["trusted_proxies"] and "0.0.0.0/0" not in auth["trusted_proxies"]
    assert auth["client_address_header"] == "X-Forwarded-For"  # what ingress-nginx appends to
