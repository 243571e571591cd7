"""The Kubernetes manifests: every overlay renders, passes the API schemas (core objects with
kubernetes-validate, prometheus-operator objects with the CRD schemas in deploy/schemas) and
checkov, and keeps the properties docs/deploy.md promises."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtp_exporter.config.allowlist import TargetAllowlist
from smtp_exporter.config.loader import load_config, load_config_text
from tests.deploy.conftest import (
    CRD_GROUP,
    DEPLOY,
    OVERLAYS,
    checkov_passes,
    documents,
    find,
    one,
    require_tool,
    run,
)

SCHEMAS = {
    "ServiceMonitor": "servicemonitor.json",
    "Probe": "probe.json",
    "PrometheusRule": "prometheusrule.json",
}
ALL = list(OVERLAYS)


def _core(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["apiVersion"] != CRD_GROUP]


def _workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (workload,) = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    return workload


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _workload(docs)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", ALL)
def test_renders(overlay: str) -> None:
    kinds = sorted(d["kind"] for d in documents(overlay))
    expected = {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "PodDisruptionBudget",
    }
    assert expected <= set(kinds)
    assert kinds.count("ServiceMonitor") == 1
    assert kinds.count("Deployment") + kinds.count("StatefulSet") == 1
    assert {d["metadata"].get("namespace") for d in documents(overlay)} == {"monitoring"}
    assert all(
        d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "smtp-exporter" for d in documents(overlay)
    )


@pytest.mark.parametrize("overlay", ALL)
def test_core_objects_pass_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    validator = require_tool("kubernetes-validate")
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(_core(documents(overlay))))
    run(validator, "--strict", "--quiet", str(path))


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    validator = require_tool("kubernetes-validate")
    docs = copy.deepcopy(_core(documents("base")))
    _container(docs)["livenesProbe"] = {"httpGet": {"path": "/-/healthy", "port": 9725}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    assert run(validator, "--strict", "--quiet", str(path), check=False).returncode != 0


@pytest.mark.parametrize("overlay", ALL)
def test_operator_objects_pass_their_crd_schemas(overlay: str, tmp_path: Path) -> None:
    checker = require_tool("check-jsonschema")
    crs = [d for d in documents(overlay) if d["apiVersion"] == CRD_GROUP]
    assert {d["kind"] for d in crs} <= set(SCHEMAS)
    for i, doc in enumerate(crs):
        path = tmp_path / f"{i}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        run(checker, "--schemafile", str(DEPLOY / "schemas" / SCHEMAS[doc["kind"]]), str(path))


@pytest.mark.parametrize(
    ("kind", "overlay", "breakage"),
    [
        ("ServiceMonitor", "base", lambda d: d["spec"]["endpoints"][0].update(scheme="gopher")),
        ("ServiceMonitor", "base", lambda d: d["spec"].pop("selector")),
        ("PrometheusRule", "base", lambda d: d["spec"]["groups"][0]["rules"][0].update(fore="5m")),
        ("Probe", "multi-target", lambda d: d["spec"]["prober"].pop("url")),
        ("Probe", "multi-target", lambda d: d["spec"].update(interval="1 minute")),
    ],
)
def test_crd_schemas_reject_invalid_objects(kind: str, overlay: str, breakage: Any, tmp_path: Path) -> None:
    checker = require_tool("check-jsonschema")
    doc = copy.deepcopy(one(documents(overlay), kind))
    breakage(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run(checker, "--schemafile", str(DEPLOY / "schemas" / SCHEMAS[kind]), str(path), check=False)
    assert result.returncode != 0


@pytest.mark.parametrize("overlay", ALL)
def test_checkov_finds_no_failed_kubernetes_check(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(documents(overlay)))
    checkov_passes(path, "kubernetes")
    # Each skip is justified in place: "checkov.io/skipN: CHECK_ID=reason".
    for doc in documents(overlay):
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check.startswith("CKV") and len(reason) > 20, value


@pytest.mark.parametrize("overlay", ALL)
def test_pod_hardening(overlay: str) -> None:
    docs = documents(overlay)
    pod = _workload(docs)["spec"]["template"]["spec"]
    container = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["ports"] == [{"name": "http-metrics", "containerPort": 9725, "protocol": "TCP"}]
    assert container["image"] == "smtp-exporter:0.1.0"


@pytest.mark.parametrize("overlay", ALL)
def test_config_and_secrets_are_mounted_as_directories(overlay: str) -> None:
    """A subPath mount never sees ConfigMap updates; a directory mount does, so the exporter reloads."""
    docs = documents(overlay)
    pod = _workload(docs)["spec"]["template"]["spec"]
    container = _container(docs)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("subPath" not in m and "subPathExpr" not in m for m in mounts.values())
    config_dir = mounts["config"]["mountPath"]
    assert f"--config.file={config_dir}/config.yml" in container["args"]
    # The generated ConfigMap has no hash suffix: an update changes it in place.
    assert volumes["config"]["configMap"]["name"] == "smtp-exporter-config"
    configmap = one(docs, "ConfigMap", "smtp-exporter-config")
    assert set(configmap["data"]) == {"config.yml"}
    assert volumes["secrets"]["secret"]["secretName"] == "smtp-exporter-auth"
    assert "env" not in container or all("secretKeyRef" not in str(e) for e in container["env"])


@pytest.mark.parametrize("overlay", ALL)
def test_shipped_config_loads_and_restricts_probe(overlay: str, tmp_path: Path) -> None:
    configmap = one(documents(overlay), "ConfigMap", "smtp-exporter-config")
    config = load_config_text(configmap["data"]["config.yml"], source=f"{overlay}/config.yml")
    assert config.http_probe.allowed_targets, "/probe must be restricted in the shipped config"
    allow = TargetAllowlist(config.http_probe.allowed_targets)
    assert not allow.allows("attacker.example.net", 25)
    assert not allow.allows("10.0.0.1", 22)
    # Every password file the config names is under the Secret's mount.
    for module in config.modules.values():
        if module.auth is not None and module.auth.password_file:
            assert module.auth.password_file.startswith("/etc/smtp-exporter/secrets/")


def test_config_files_load_from_disk() -> None:
    for path in sorted(DEPLOY.rglob("config.yml")):
        load_config(str(path))


@pytest.mark.parametrize("overlay", ALL)
def test_network_policy(overlay: str) -> None:
    policy = one(documents(overlay), "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress = [(p["protocol"], p["port"]) for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress == [("TCP", 9725)]
    assert all("from" not in rule or rule["from"] for rule in policy["ingress"])
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 25), ("TCP", 465), ("TCP", 587)}
    workload = _workload(documents(overlay))
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", ALL)
def test_service_monitor_and_pdb_select_the_pods(overlay: str) -> None:
    docs = documents(overlay)
    pod_labels = _workload(docs)["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "smtp-exporter")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_base_runs_one_replica() -> None:
    assert one(documents("base"), "Deployment")["spec"]["replicas"] == 1


def test_sharded_statefulset() -> None:
    docs = documents("sharded")
    assert not find(docs, "Deployment")
    statefulset = one(docs, "StatefulSet")
    replicas = statefulset["spec"]["replicas"]
    assert replicas > 1
    container = _container(docs)
    assert f"--shard.count={replicas}" in container["args"]
    assert "--shard.index=$(SHARD_INDEX)" in container["args"]
    (env,) = [e for e in container["env"] if e["name"] == "SHARD_INDEX"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    service = one(docs, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"


def test_sharded_pod_template_is_the_deployments_plus_the_shard_flags() -> None:
    deployment = copy.deepcopy(one(documents("base"), "Deployment")["spec"]["template"])
    template = copy.deepcopy(one(documents("sharded"), "StatefulSet")["spec"]["template"])
    (container,) = template["spec"]["containers"]
    container["args"] = [a for a in container["args"] if not a.startswith("--shard.")]
    container.pop("env")
    assert template == deployment


def test_multi_target_probe() -> None:
    docs = documents("multi-target")
    probe = one(docs, "Probe")["spec"]
    service = one(docs, "Service", "smtp-exporter")
    port = service["spec"]["ports"][0]["port"]
    assert probe["prober"]["path"] == "/probe"
    assert probe["prober"]["url"] == f"smtp-exporter.monitoring.svc:{port}"
    assert probe["module"]
    relabel = {
        r["targetLabel"]: r["sourceLabels"] for r in probe["targets"]["staticConfig"]["relabelingConfigs"]
    }
    assert relabel == {"target": ["__param_target"], "module": ["__param_module"]}
    configmap = one(docs, "ConfigMap", "smtp-exporter-config")
    config = load_config_text(configmap["data"]["config.yml"], source="multi-target/config.yml")
    assert probe["module"] in config.modules
    allow = TargetAllowlist(config.http_probe.allowed_targets)
    for target in probe["targets"]["staticConfig"]["static"]:
        host, _, port_text = target.rpartition(":")
        assert allow.allows(host, int(port_text)), f"{target} would be refused by allowed_targets"
