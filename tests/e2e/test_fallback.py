"""Delivered via fallback (issue #13), end to end: a real Prometheus scrapes a real exporter that
probes a mail domain whose primary MX is silent (a listener with a full accept queue on
127.0.0.2) and whose secondary answers (aiosmtpd on 127.0.0.1), beside a domain whose primary
answers. The dashboard's "Delivered via fallback" panel shows which, and SMTPProbeFallback
goes pending, then fires, for the first domain only. Its own small stack (the loopback DNS
server is needed for the MX records), with the shipped rules' `for:` scaled as in conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import FOR_SCALE, SCALED_THRESHOLDS, SCHEDULED_JOB, SCRAPE_INTERVAL
from tests.e2e.stack import (
    Exporter,
    Prometheus,
    dashboard,
    grafana_value,
    interpolate,
    panels,
    rules_with_short_for,
    variables,
    wait_until,
)
from tests.helpers import require_binary
from tests.probe.test_failover import silent_host
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer

FALLBACK = "fallback.test"  # MX 10 silent, MX 20 working
PRIMARY = "primary.test"  # MX 10 working
PANEL_ID = 101
BUILTINS = {"__range": "5m", "__range_s": "300", "__rate_interval": "4s", "__interval": "1s"}


@dataclass(frozen=True, slots=True)
class FallbackStack:
    prometheus: Prometheus
    exporter: Exporter


@pytest.fixture(scope="module")
def fallback_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FallbackStack]:
    prometheus_binary = require_binary("prometheus")
    work: Path = tmp_path_factory.mktemp("e2e-fallback")
    with contextlib.ExitStack() as stack:
        server = AiosmtpdServer().start()
        stack.callback(server.stop)
        stack.enter_context(silent_host("127.0.0.2", server.port))
        dns = DnsServer(
            {
                FALLBACK: {"MX": ["10 mx-silent.example.test.", "20 mx-working.example.test."]},
                PRIMARY: {"MX": ["10 mx-working.example.test.", "20 mx-silent.example.test."]},
                "mx-silent.example.test": {"A": "127.0.0.2"},
                "mx-working.example.test": {"A": "127.0.0.1"},
            }
        ).start()
        stack.callback(dns.stop)
        module = {
            "mx": True,
            "ip_protocol": "ip4",
            "port": server.port,
            "timeout": "900ms",
            "connect_timeout": "300ms",
            "ehlo": "probe.test",
            "dns": {"nameservers": [dns.nameserver], "timeout": "300ms"},
        }
        config = work / "smtp-exporter.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "modules": {"mx_check": module},
                    "targets": [
                        {"target": name, "module": "mx_check", "interval": "1s"}
                        for name in (FALLBACK, PRIMARY)
                    ],
                }
            )
        )
        exporter = Exporter(config, work / "exporter.log")
        stack.callback(exporter.stop)
        rule_file = work / "rules.yml"
        rule_file.write_text(
            yaml.safe_dump(rules_with_short_for(FOR_SCALE, SCALED_THRESHOLDS), sort_keys=False)
        )
        prometheus_config = work / "prometheus.yml"
        prometheus_config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": SCRAPE_INTERVAL,
                        "evaluation_interval": SCRAPE_INTERVAL,
                    },
                    "rule_files": [str(rule_file)],
                    "scrape_configs": [
                        {"job_name": SCHEDULED_JOB, "static_configs": [{"targets": [exporter.address]}]}
                    ],
                }
            )
        )
        prometheus = Prometheus(prometheus_binary, prometheus_config, work / "tsdb", work / "prometheus.log")
        stack.callback(prometheus.stop)
        wait_until(
            lambda: len(prometheus.query(f'smtp_probe_fallback{{job="{SCHEDULED_JOB}"}}')) == 2,
            "both targets' smtp_probe_fallback in Prometheus",
            check=prometheus.check_running,
        )
        yield FallbackStack(prometheus, exporter)


def _panel_query() -> str:
    (panel,) = [p for p in panels(dashboard()) if p["id"] == PANEL_ID]
    assert panel["title"] == "Delivered via fallback"
    (target,) = panel["targets"]
    expr: str = target["expr"]
    return expr


def _by_target(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["target"]: float(r["value"][1]) for r in result}


def test_the_panel_shows_which_target_delivers_via_fallback(fallback_stack: FallbackStack) -> None:
    defined = variables()
    prometheus = fallback_stack.prometheus
    everything = {name: grafana_value(defined[name], None) for name in ("job", "target", "module")}
    expr = interpolate(_panel_query(), {**BUILTINS, **everything})
    wait_until(
        lambda: _by_target(prometheus.query(expr)) == {FALLBACK: 1.0, PRIMARY: 0.0},
        lambda: f"{expr}: {prometheus.query(expr)}",
        timeout=30,
    )
    assert prometheus.query_range(expr, 10)  # the panel is a range query: a timeline of it
    one = {**everything, "target": grafana_value(defined["target"], [FALLBACK])}
    assert _by_target(prometheus.query(interpolate(_panel_query(), {**BUILTINS, **one}))) == {FALLBACK: 1.0}
    # Why: the silent primary's attempts time out, every probe.
    failures = prometheus.query(f'smtp_probe_attempt_failures_total{{target="{FALLBACK}", reason="timeout"}}')
    assert failures and float(failures[0]["value"][1]) >= 1


def test_the_alert_goes_pending_then_fires_for_the_fallback_only(fallback_stack: FallbackStack) -> None:
    prometheus = fallback_stack.prometheus

    def states() -> dict[str, str]:
        return {
            alert["labels"]["target"]: alert["state"]
            for alert in prometheus.alerts()
            if alert["labels"]["alertname"] == "SMTPProbeFallback"
        }

    wait_until(
        lambda: states().get(FALLBACK) in ("pending", "firing"),
        lambda: f"SMTPProbeFallback pending for {FALLBACK}: {states()}",
        timeout=30,
    )
    wait_until(
        lambda: states().get(FALLBACK) == "firing",
        lambda: f"SMTPProbeFallback firing for {FALLBACK}: {states()}",
        timeout=45,
        check=prometheus.check_running,
    )
    assert states() == {FALLBACK: "firing"}  # never for the domain whose primary answers
    (alert,) = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "SMTPProbeFallback"]
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["module"] == "mx_check" and alert["labels"]["job"] == SCHEDULED_JOB
    assert alert["annotations"]["summary"] == f"SMTP target {FALLBACK} delivers only via a fallback"
    for rule in prometheus.rules():
        if rule.get("name") == "SMTPProbeFallback":
            assert rule["health"] == "ok" and rule["duration"] == 15, rule
