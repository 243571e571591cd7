"""The alert rules: promtool accepts them, unit tests cover every alert, and the
PrometheusRule embeds exactly the same groups."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT, RULES, documents, one, require_tool, run
from tests.deploy.contract import METRICS, PHASES, REASONS, label_values, metric_names

TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alert_tests() -> list[dict[str, Any]]:
    cases = []
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    assert TESTS
    run(promtool, "test", "rules", *map(str, TESTS))


def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules with a changed threshold do."""
    promtool = require_tool("promtool")
    text = RULES.read_text()
    assert 'smtp_probe_phase_duration_seconds{phase="banner"} > 15' in text
    (tmp_path / "tests").mkdir()
    (tmp_path / RULES.name).write_text(text.replace('{phase="banner"} > 15', '{phase="banner"} > 25'))
    for path in TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    result = run(promtool, "test", "rules", *(str(tmp_path / "tests" / p.name) for p in TESTS), check=False)
    assert result.returncode != 0
    assert "SMTPProbeSlowPhase" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = _alert_tests()
    for rule in _rules():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no test where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no test where it does not fire"


def test_every_alert_has_severity_summary_and_description() -> None:
    names = set()
    for rule in _rules():
        assert "record" not in rule
        assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
        names.add(rule["alert"])
        # info: SMTPDANERolloverNotReady (issue 14), nothing is broken yet.
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        assert "for" in rule, rule["alert"]
    assert {
        "SMTPProbeTargetDown",
        "SMTPProbeHighFailureRatio",
        "SMTPProbeSlowPhase",
        "SMTPProbeTemporaryFailures",
        "SMTPProbeTLSCertificateExpiringSoon",
        "SMTPProbeTLSCertificateExpiryCritical",
        "SMTPProbeTLSCertificateInvalid",
        "SMTPProbeSTARTTLSNotOffered",
        "SMTPProbeTargetNotProbed",
        "SMTPExporterConfigReloadFailed",
        "SMTPExporterWebConfigReloadFailed",
        "SMTPExporterOverloaded",
        "SMTPProbeFallback",
        "SMTPDeliveryFailing",
        "SMTPDeliverySlow",
        "SMTPDeliveryAuthenticationFailing",
        # issue 14
        "SMTPDANEInvalid",
        "SMTPDANELookupFailed",
        "SMTPMTASTSMXNotCovered",
        "SMTPMTASTSCertInvalid",
        "SMTPMTASTSPolicyUnreachable",
        "SMTPMTASTSPolicyChangedWithoutIdChange",
        "SMTPDNSBLListed",
        "SMTPDNSBLZoneUnhealthy",
        "SMTPFCrDNSMismatch",
        "SMTPDANERolloverNotReady",
        "SMTPCertificateChainExpiringSoon",
    } <= names


def test_expressions_use_only_contract_metrics_phases_and_reasons() -> None:
    for rule in _rules():
        expr = rule["expr"]
        unknown = metric_names(expr) - METRICS - {"up"}
        assert not unknown, f"{rule['alert']}: not exporter metrics: {sorted(unknown)}"
        assert label_values(expr, "phase") <= PHASES, rule["alert"]
        assert label_values(expr, "reason") <= REASONS, rule["alert"]


def test_prometheusrule_embeds_the_rule_file_unchanged() -> None:
    generator = _generator()
    embedded = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())
    assert embedded["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert (DEPLOY / "base" / "prometheusrule.yaml").read_text() == generator.render(), (
        "deploy/base/prometheusrule.yaml is out of date: run python3 deploy/generate.py"
    )
    rendered = one(documents("base"), "PrometheusRule")
    assert rendered["spec"]["groups"] == embedded["spec"]["groups"]


def test_prometheusrule_groups_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rule = one(documents("base"), "PrometheusRule")
    path = tmp_path / "from-prometheusrule.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run(promtool, "check", "rules", str(path))


@pytest.mark.parametrize("overlay", ["base", "sharded", "multi-target"])
def test_selected_by_kube_prometheus_stack(overlay: str) -> None:
    """ServiceMonitor, PrometheusRule and Probe carry the `release` label kube-prometheus-stack selects on."""
    for doc in documents(overlay):
        if doc["kind"] in {"ServiceMonitor", "PrometheusRule", "Probe"}:
            assert doc["metadata"]["labels"].get("release") == "kube-prometheus-stack", doc["kind"]
