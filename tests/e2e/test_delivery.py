"""End-to-end delivery (issue 15) against a real Prometheus: a real exporter probes two real
mail paths (Postfix with STARTTLS relaying over LMTP to Dovecot, tests/delivery/conftest.py),
one delivering, one whose Postfix holds every message (defer_transports). The Delivery row's
queries return data for them, SMTPDeliveryFailing fires for the deferring one only, and
SMTPDeliveryAuthenticationFailing for the module that reads the topmost Authentication-Results
(another authserv-id's, spf=fail dkim=none) and not for the one reading its own authserv-id's
(all pass). SMTPDeliverySlow fires for a module whose deliveries really are slow, and for no
other: the delivering Postfix puts that module's messages on hold (header_checks HOLD on its
probe header) and the test releases each HOLD_SECONDS after it went on hold, so each of its
deliveries takes more than HOLD_SECONDS, the others' well under a second. The rule's threshold
(a p90 above 300 s) is scaled like its `for:` (conftest.py's SCALED_THRESHOLDS: above 5 s), its
1 h window is not (it covers the whole test). Its own stack, with the shipped rules' `for:`
scaled as in conftest.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.delivery.conftest import relaying_to
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
from tests.servers.dovecot import Dovecot
from tests.servers.postfix_smtpd import PostfixSmtpd
from tests.servers.tls import TestCA

# Grafana's $__rate_interval is at least four scrape intervals; a probe every 5 s needs more.
BUILTINS = {"__range": "5m", "__range_s": "300", "__rate_interval": "30s", "__interval": "1s"}
SLOW_MODULE = "roundtrip_slow"
HOLD_SECONDS = 6  # above SMTPDeliverySlow's threshold scaled (5 s)
# Buckets that resolve a few seconds: a 6 s delivery and a 0.2 s one fall far apart.
DELIVERY_BUCKETS = [0.5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 30]


class Releaser:
    """Releases every message `postfix` holds HOLD_SECONDS after the message went on hold
    (seen here within 0.1 s), as an operator or a slow content filter would, until stopped."""

    def __init__(self, postfix: PostfixSmtpd) -> None:
        self._postfix = postfix
        self._since: dict[str, float] = {}  # queue ID -> when first seen on hold
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="postfix-releaser", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopped.wait(0.1):
                now = time.monotonic()
                for queue_id in self._postfix.held():
                    self._since.setdefault(queue_id, now)
                due = [queue_id for queue_id, since in self._since.items() if now - since >= HOLD_SECONDS]
                self._postfix.release(*due)
                for queue_id in due:
                    del self._since[queue_id]
        except BaseException as error:  # reported by check_running, in the test's thread
            self._error = error

    def check_running(self) -> None:
        if self._error is not None:
            raise RuntimeError("releasing the held messages failed") from self._error

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        self.check_running()


@dataclass(frozen=True, slots=True)
class DeliveryStack:
    prometheus: Prometheus
    delivering: str  # the targets
    deferring: str
    releaser: Releaser

    def check_running(self) -> None:
        self.prometheus.check_running()
        self.releaser.check_running()


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
            # The delivering path holds the slow module's messages only.
            main_cf = relaying_to(
                dovecot, work / str(deliver), deliver=deliver, hold_module=SLOW_MODULE if deliver else None
            )
            postfix = PostfixSmtpd(tls=tls_ca.server_cert, main_cf=main_cf).start()
            stack.callback(postfix.stop)
            paths.append((postfix, dovecot))
        (delivering_postfix, delivering_dovecot), (deferring_postfix, deferring_dovecot) = paths
        releaser = Releaser(delivering_postfix)
        stack.callback(releaser.stop)
        secret = work / "imap-password"
        secret.write_text(delivering_dovecot.password + "\n")
        modules = {
            "roundtrip": _module(delivering_postfix, delivering_dovecot, tls_ca, secret),
            "roundtrip_own": _module(
                delivering_postfix, delivering_dovecot, tls_ca, secret, authserv_id="mx.test"
            ),
            "roundtrip_deferred": _module(deferring_postfix, deferring_dovecot, tls_ca, secret),
            # Room for the hold: the interval exceeds timeout + delivery.timeout (2 s + 10 s).
            # Its own authserv-id's header (all pass): slow, and nothing else wrong.
            SLOW_MODULE: _module(
                delivering_postfix, delivering_dovecot, tls_ca, secret, timeout="10s", authserv_id="mx.test"
            ),
        }
        delivering, deferring = delivering_postfix.target, deferring_postfix.target
        targets = [
            {"target": delivering, "module": "roundtrip", "interval": "5s"},
            {"target": delivering, "module": "roundtrip_own", "interval": "5s"},
            {"target": deferring, "module": "roundtrip_deferred", "interval": "5s"},
            {"target": delivering, "module": SLOW_MODULE, "interval": "13s"},
        ]
        config = work / "smtp-exporter.yml"
        metrics = {"delivery_histogram_buckets": DELIVERY_BUCKETS}
        config.write_text(yaml.safe_dump({"modules": modules, "targets": targets, "metrics": metrics}))
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
        result = DeliveryStack(prometheus, delivering, deferring, releaser)
        wait_until(
            lambda: len(prometheus.query(f'smtp_delivery_success{{job="{SCHEDULED_JOB}"}}')) == 4,
            "the four series' smtp_delivery_success in Prometheus",
            timeout=60,
            check=result.check_running,
        )
        yield result


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

    def success() -> dict[str, float]:
        return {
            r["metric"]["module"]: float(r["value"][1])
            for r in prometheus.query(f'smtp_delivery_success{{job="{SCHEDULED_JOB}"}}')
        }

    expected = {"roundtrip": 1.0, "roundtrip_own": 1.0, "roundtrip_deferred": 0.0, SLOW_MODULE: 1.0}
    # (The slow module's first delivery may still be on hold.)
    wait_until(lambda: success() == expected, lambda: f"smtp_delivery_success: {success()}", timeout=30)
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
    # The modules reading their own authserv-id's header (all pass) never fire.
    assert set(_alerts(prometheus, "SMTPDeliveryAuthenticationFailing")) == authentication
    for rule in prometheus.rules():
        if rule.get("name", "").startswith("SMTPDelivery"):
            assert rule["health"] == "ok", rule


def test_slow_alert_fires_for_the_held_module_only(delivery_stack: DeliveryStack) -> None:
    """SMTPDeliverySlow (threshold scaled to 5 s) fires for the module whose messages Postfix
    holds for HOLD_SECONDS, not for the fast modules of the same Postfix and mailbox, whose
    p90 from the same histogram is there and under the threshold."""
    prometheus = delivery_stack.prometheus
    slow = (delivery_stack.delivering, f"{SLOW_MODULE} ")
    wait_until(
        lambda: _alerts(prometheus, "SMTPDeliverySlow").get(slow, {}).get("state") == "firing",
        lambda: f"SMTPDeliverySlow: {_alerts(prometheus, 'SMTPDeliverySlow')}",
        timeout=120,
        check=delivery_stack.check_running,
    )
    alerts = _alerts(prometheus, "SMTPDeliverySlow")
    assert set(alerts) == {slow}
    alert = alerts[slow]
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"Mail to {delivery_stack.delivering} is delivered slowly"
    # Every held delivery took the hold at least; its p90 lies within the buckets above 5 s.
    assert HOLD_SECONDS <= float(alert["value"]) < DELIVERY_BUCKETS[-1]
    durations = prometheus.query(
        f'min_over_time(smtp_delivery_duration_seconds{{module="{SLOW_MODULE}"}}[1h])'
    )
    assert len(durations) == 1 and float(durations[0]["value"][1]) >= HOLD_SECONDS, durations
    p90 = prometheus.query(
        "histogram_quantile(0.9, sum by (module, le)"
        ' (rate(smtp_delivery_duration_distribution_seconds_bucket{module=~"roundtrip|roundtrip_own"}[1h])))'
    )
    assert {r["metric"]["module"] for r in p90} == {"roundtrip", "roundtrip_own"}
    assert all(float(r["value"][1]) < 5 for r in p90), p90
    assert (delivery_stack.delivering, f"{SLOW_MODULE} ") not in _alerts(prometheus, "SMTPDeliveryFailing")
