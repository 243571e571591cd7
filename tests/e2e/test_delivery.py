"""End-to-end delivery (issue 15) against a real Prometheus: a real exporter probes two real
mail paths (Postfix with STARTTLS relaying over LMTP to Dovecot, tests/delivery/conftest.py),
one delivering, one whose Postfix holds every message (defer_transports). The Delivery row's
queries return data for them, SMTPDeliveryFailing fires for the deferring one only, and
SMTPDeliveryAuthenticationFailing for the module that reads the topmost Authentication-Results
(another authserv-id's, spf=fail dkim=none) and not for the one reading its own authserv-id's
(all pass). SMTPDeliverySlow needs deliveries slower than 5 minutes: its promtool tests
(alerts/tests/smtp-delivery.test.yml) show it firing, here it must stay quiet. Its own stack,
with the shipped rules' `for:` scaled as in conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.conftest import relaying_to
from tests.e2e.conftest import FOR_SCALE, SCHEDULED_JOB, SCRAPE_INTERVAL
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
from tests.servers.dovecot import Dovecot
from tests.servers.postfix_smtpd import PostfixSmtpd
from tests.servers.tls import TestCA

# Grafana's $__rate_interval is at least four scrape intervals; a probe every 5 s needs more.
BUILTINS = {"__range": "5m", "__range_s": "300", "__rate_interval": "30s", "__interval": "1s"}


@dataclass(frozen=True, slots=True)
class DeliveryStack:
    prometheus: Prometheus
    delivering: str  # the targets
    deferring: str


def _module(
    postfix: PostfixSmtpd, dovecot: Dovecot, ca: TestCA, secret: Path, **delivery: Any
) -> dict[str, Any]:
    return {
        "port": postfix.port,
        "starttls": "required",
        "tls_config": {"ca_file": ca.ca_file},
        "transaction": "message",
        "mail_from": "probe@example.org",
        "rcpt_to": [dovecot.username],
        "ehlo": "probe.test",
        "timeout": "2s",
        "delivery": {
            "imap": {
                "host": dovecot.host,
                "port": dovecot.imaps_port,
                "tls_config": {"ca_file": ca.ca_file, "server_name": "localhost"},
                "username": dovecot.username,
                "password_file": str(secret),
            },
            "timeout": "2s",
            "poll_interval": "200ms",
            **delivery,
        },
    }


@pytest.fixture(scope="module")
def delivery_stack(tmp_path_factory: pytest.TempPathFactory, tls_ca: TestCA) -> Iterator[DeliveryStack]:
    prometheus_binary = require_binary("prometheus")
    work: Path = tmp_path_factory.mktemp("e2e-delivery")
    with contextlib.ExitStack() as stack:
        paths = []
        for deliver in (True, False):
            dovecot = Dovecot(tls_ca.server_cert).start()
            stack.callback(dovecot.stop)
            (work / str(deliver)).mkdir()
            postfix = PostfixSmtpd(
                tls=tls_ca.server_cert, main_cf=relaying_to(dovecot, work / str(deliver), deliver=deliver)
            ).start()
            stack.callback(postfix.stop)
            paths.append((postfix, dovecot))
        (delivering_postfix, delivering_dovecot), (deferring_postfix, deferring_dovecot) = paths
        secret = work / "imap-password"
        secret.write_text(delivering_dovecot.password + "\n")
        modules = {
            "roundtrip": _module(delivering_postfix, delivering_dovecot, tls_ca, secret),
            "roundtrip_own": _module(
                delivering_postfix, delivering_dovecot, tls_ca, secret, authserv_id="mx.test"
            ),
            "roundtrip_deferred": _module(deferring_postfix, deferring_dovecot, tls_ca, secret),
        }
        delivering, deferring = delivering_postfix.target, deferring_postfix.target
        targets = [
            {"target": delivering, "module": "roundtrip", "interval": "5s"},
            {"target": delivering, "module": "roundtrip_own", "interval": "5s"},
            {"target": deferring, "module": "roundtrip_deferred", "interval": "5s"},
        ]
        config = work / "smtp-exporter.yml"
        config.write_text(yaml.safe_dump({"modules": modules, "targets": targets}))
        exporter = Exporter(config, work / "exporter.log")
        stack.callback(exporter.stop)
        rule_file = work / "rules.yml"
        rule_file.write_text(yaml.safe_dump(rules_with_short_for(FOR_SCALE), sort_keys=False))
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
            lambda: len(prometheus.query(f'smtp_delivery_success{{job="{SCHEDULED_JOB}"}}')) == 3,
            "the three series' smtp_delivery_success in Prometheus",
            timeout=60,
            check=prometheus.check_running,
        )
        yield DeliveryStack(prometheus, delivering, deferring)


def _row_queries() -> list[tuple[int, str, bool]]:
    found = []
    for panel in panels(dashboard()):
        if 300 < panel["id"] < 400:
            for target in panel["targets"]:
                found.append((panel["id"], target["expr"], bool(target.get("instant"))))
    return found


def _alerts(prometheus: Prometheus, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (a["labels"]["target"], a["labels"]["module"] + " " + a["labels"].get("method", "")): a
        for a in prometheus.alerts()
        if a["labels"]["alertname"] == name
    }


def test_the_delivery_rows_queries_return_data(delivery_stack: DeliveryStack) -> None:
    prometheus = delivery_stack.prometheus
    (row,) = [p for p in panels(dashboard()) if p["id"] == 300]
    assert row["type"] == "row" and row["title"] == "Delivery"
    defined = variables()
    everything = {name: grafana_value(defined[name], None) for name in ("job", "target", "module")}
    queries = _row_queries()
    assert {panel for panel, _, _ in queries} == {301, 302, 303, 304}

    def empty() -> list[str]:
        missing = []
        for panel, expr, instant in queries:
            text = interpolate(expr, {**BUILTINS, **everything})
            result = prometheus.query(text) if instant else prometheus.query_range(text, 30)
            if not result:
                missing.append(f"{panel}: {text}")
        return missing

    wait_until(lambda: not empty(), lambda: f"queries without data: {empty()}", timeout=60)
    success = {
        r["metric"]["module"]: float(r["value"][1])
        for r in prometheus.query(f'smtp_delivery_success{{job="{SCHEDULED_JOB}"}}')
    }
    assert success == {"roundtrip": 1.0, "roundtrip_own": 1.0, "roundtrip_deferred": 0.0}
    hops = prometheus.query('smtp_delivery_hops{module="roundtrip_own"}')
    assert [float(r["value"][1]) for r in hops] == [2.0]
    phases = prometheus.query('smtp_probe_phase_duration_seconds{module="roundtrip_own", phase="imap_login"}')
    assert len(phases) == 1


def test_failing_and_authentication_alerts_fire_for_their_targets_only(delivery_stack: DeliveryStack) -> None:
    prometheus = delivery_stack.prometheus
    failing = (delivery_stack.deferring, "roundtrip_deferred ")
    wait_until(
        lambda: _alerts(prometheus, "SMTPDeliveryFailing").get(failing, {}).get("state") == "firing",
        lambda: f"SMTPDeliveryFailing: {_alerts(prometheus, 'SMTPDeliveryFailing')}",
        timeout=90,
        check=prometheus.check_running,
    )
    assert set(_alerts(prometheus, "SMTPDeliveryFailing")) == {failing}
    authentication = {
        (delivery_stack.delivering, "roundtrip spf"),
        (delivery_stack.delivering, "roundtrip dkim"),
    }

    def firing() -> set[tuple[str, str]]:
        alerts = _alerts(prometheus, "SMTPDeliveryAuthenticationFailing")
        return {key for key, alert in alerts.items() if alert["state"] == "firing"}

    wait_until(lambda: firing() == authentication, lambda: f"firing: {firing()}", timeout=90)
    # The module reading its own authserv-id's header (all pass) never fires; nothing is slow.
    assert set(_alerts(prometheus, "SMTPDeliveryAuthenticationFailing")) == authentication
    assert _alerts(prometheus, "SMTPDeliverySlow") == {}
    for rule in prometheus.rules():
        if rule.get("name", "").startswith("SMTPDelivery"):
            assert rule["health"] == "ok", rule
