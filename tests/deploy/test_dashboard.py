"""The Grafana dashboard: structure, data source plumbing, and queries that only use the
exporter's metrics and the template variables the end-to-end test can substitute."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DASHBOARD, ROOT, documents, one, require_tool, run
from tests.deploy.contract import METRICS, PHASES, REASONS, label_values, metric_names

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ALLOWED_VARIABLES = {"job", "target", "module", "__range", "__rate_interval"}
# What the end-to-end test (and this one) substitutes for the variables.
SUBSTITUTIONS = {"$job": ".*", "$target": ".*", "$module": ".*", "$__range": "1h", "$__rate_interval": "1m"}


def _dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return result


def _panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p.get("targets", [])]


def test_classic_model_with_a_datasource_variable() -> None:
    dashboard = _dashboard()
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert dashboard["uid"] == "smtp-exporter"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "target", "module"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["definition"].startswith("label_values(")
        assert variable["definition"].endswith(f", {name})")
        assert variable["includeAll"] and variable["allValue"] == ".*"
    assert set(variables) == {"datasource", "job", "target", "module"}


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    ids = set()
    for panel in _panels():
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] == "row":
            assert not panel.get("targets")
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_queries_use_only_contract_metrics_and_known_variables() -> None:
    for title, expr in _queries():
        unknown = metric_names(expr) - METRICS
        assert not unknown, f"{title}: not exporter metrics: {sorted(unknown)}"
        assert label_values(expr, "phase") <= PHASES, title
        assert label_values(expr, "reason") <= REASONS, title
        variables = set(re.findall(r"\$\{?(\w+)", expr))
        assert variables <= ALLOWED_VARIABLES, f"{title}: {sorted(variables - ALLOWED_VARIABLES)}"
        if "smtp_probe" in expr:  # per-target panels follow all three selectors
            for name in ("job", "target", "module"):
                assert f'{name}=~"${name}"' in expr, f"{title}: no {name} selector in {expr}"
        else:
            assert 'job=~"$job"' in expr, title


def test_the_panels_the_issue_asks_for() -> None:
    panels = _panels()
    by_type = {(p["type"], p["title"]) for p in panels}
    exprs = "\n".join(expr for _, expr in _queries())
    overview = next(p for p in panels if p["type"] == "table" and p["title"] == "Targets")
    overview_metrics = set().union(*(metric_names(t["expr"]) for t in overview["targets"]))
    assert {
        "smtp_probe_success",
        "smtp_probe_last_failure_info",
        "smtp_probe_duration_seconds",
        "smtp_probe_tls_version_info",
        "smtp_probe_tls_cert_not_after_timestamp_seconds",
    } <= overview_metrics
    phase = next(p for p in panels if p["title"].startswith("Phase latency"))
    assert phase["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "smtp_probe_reply_code" in exprs
    assert "sum by (target, mx_host, phase, reason) (increase(smtp_probe_failures_total" in exprs
    assert "histogram_quantile(0.99, " in exprs and "smtp_probe_duration_distribution_seconds_bucket" in exprs
    assert "avg_over_time(smtp_probe_success{" in exprs and "[$__range])" in exprs
    assert ("bargauge", "Certificate expiry") in by_type
    for metric in (
        "smtp_exporter_event_loop_lag_seconds",
        "smtp_exporter_probes_in_flight",
        "smtp_exporter_probes_skipped_total",
        "smtp_exporter_config_last_reload_successful",
    ):
        assert metric in exprs


def test_the_posture_row() -> None:
    """Issue 14's "Mail security posture" row: its own id and y range (200-299), below every
    other panel, per domain and MX: DANE state, TLSA matches, MTA-STS mode and coverage, DNSBL
    listings, FCrDNS, chain expiry."""
    panels = _panels()
    posture = [p for p in panels if 200 <= p["id"] <= 299]
    (row,) = [p for p in posture if p["type"] == "row"]
    assert row["title"] == "Mail security posture" and row["id"] == 200
    assert all(200 <= p["gridPos"]["y"] < 300 for p in posture)
    assert not [p for p in panels if p not in posture and 200 <= p["gridPos"]["y"] < 300]
    assert min(p["gridPos"]["y"] for p in posture) > max(
        p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels if p["id"] < 200
    )
    exprs = "\n".join(t["expr"] for p in posture for t in p.get("targets", []))
    for metric in (
        "smtp_dane_state",
        "smtp_dane_tlsa_record_match",
        "smtp_mta_sts_policy_mode",
        "smtp_mta_sts_mx_covered",
        "smtp_mta_sts_cert_valid",
        "smtp_dnsbl_state",
        "smtp_fcrdns_match",
        "smtp_probe_tls_chain_earliest_not_after_timestamp_seconds",
    ):
        assert metric in exprs, metric
    for panel in posture:  # every posture panel follows the three selectors
        for target in panel.get("targets", []):
            for name in ("job", "target", "module"):
                assert f'{name}=~"${name}"' in target["expr"], (panel["title"], target["expr"])


def test_every_query_parses(tmp_path: Path) -> None:
    """With the variables substituted as the end-to-end test does, promtool parses every query."""
    promtool = require_tool("promtool")
    rules = []
    for i, (_, expr) in enumerate(_queries()):
        for variable, value in sorted(SUBSTITUTIONS.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_configmap_is_generated_from_the_json_file() -> None:
    for overlay in ("base", "sharded", "multi-target"):
        configmap = one(documents(overlay), "ConfigMap", "smtp-exporter-dashboard")
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["data"]["smtp-exporter.json"] == DASHBOARD.read_text()


def test_provisioning_file() -> None:
    provisioning = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards.yml").read_text())
    assert provisioning["apiVersion"] == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
