"""Every shipped alert, evaluated by a real Prometheus on real probe results: the alerts that
should fire for the failing servers fire, with their labels, and nothing fires for the
healthy ones. The rules are the shipped ones with `for:` scaled from minutes to seconds
(conftest.py)."""

from __future__ import annotations

import time
from typing import Any

import yaml

from tests.e2e.conftest import FOR_SCALE, PROBE_JOB, SCALED_THRESHOLDS, SCHEDULED_JOB, STATIC_PROBE_JOB, Stack
from tests.e2e.stack import RULES, parse_duration, shipped_alerts, wait_until

# (alert, job, the series' target, or its instance for the exporter's own alerts)
Key = tuple[str, str, str]


def _expected(stack: Stack) -> set[Key]:
    def scheduled(alert: str, name: str) -> Key:
        return (alert, SCHEDULED_JOB, stack.target(name))

    return {
        # Refused at RCPT by every probe, 4xx or 5xx; a certificate for another name; no STARTTLS.
        *(scheduled("SMTPProbeTargetDown", n) for n in ("tempfail", "rejected", "wrong_host", "plaintext")),
        scheduled("SMTPProbeTemporaryFailures", "tempfail"),
        # One probe in three refused: never down, but intermittently failing.
        scheduled("SMTPProbeHighFailureRatio", "flapping"),
        scheduled("SMTPProbeSlowPhase", "slow"),
        scheduled("SMTPProbeTLSCertificateExpiringSoon", "expiring"),
        scheduled("SMTPProbeTLSCertificateExpiryCritical", "expiring_critical"),
        scheduled("SMTPProbeTLSCertificateInvalid", "wrong_host"),
        # STARTTLS offered to the first probes, then not; and a `starttls: required` module
        # against a server that never offers it.
        scheduled("SMTPProbeSTARTTLSNotOffered", "starttls_lost"),
        scheduled("SMTPProbeSTARTTLSNotOffered", "plaintext"),
        ("SMTPExporterDown", SCHEDULED_JOB, stack.dead_exporter),
        # Multi-target mode: the alerts on the latest result work with the relabelled labels.
        ("SMTPProbeTargetDown", PROBE_JOB, stack.probed["banner_refused"]),
        ("SMTPProbeTLSCertificateExpiringSoon", PROBE_JOB, stack.probed["expiring"]),
        ("SMTPProbeTargetDown", STATIC_PROBE_JOB, stack.static_probed["banner_refused"]),
    }


# A flapping target's failed probe makes SMTPProbeTargetDown pending; its `for:` (five
# failed probes in a row) must keep it from firing.
def _may_be_pending(stack: Stack) -> set[Key]:
    return {("SMTPProbeTargetDown", SCHEDULED_JOB, stack.target("flapping"))}


def _key(alert: dict[str, Any]) -> Key:
    labels = alert["labels"]
    return (labels["alertname"], labels["job"], labels.get("target", labels["instance"]))


def _active(stack: Stack, state: str) -> dict[Key, dict[str, Any]]:
    alerts: dict[Key, dict[str, Any]] = {}
    for alert in stack.prometheus.alerts():
        if alert["state"] == state:
            key = _key(alert)
            assert key not in alerts or alert["labels"].get("phase"), (alert, alerts[key])
            alerts[key] = alert
    return alerts


def _describe(found: set[Key], expected: set[Key]) -> str:
    return f"missing {sorted(expected - found)}; unexpected {sorted(found - expected)}"


def test_rules_are_the_shipped_ones_with_shorter_for(stack: Stack) -> None:
    """Only `for:` and the SCALED_THRESHOLDS differ from the shipped file, each by FOR_SCALE."""

    def without_for(rules: dict[str, Any]) -> dict[str, Any]:
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("for", None)
        return rules

    loaded_file = yaml.safe_load((stack.work / "rules.yml").read_text())
    shipped_file = yaml.safe_load(RULES.read_text())
    # The one scaled threshold, by hand: a p90 above 5 minutes becomes one above 5 s.
    assert SCALED_THRESHOLDS == {"SMTPDeliverySlow": "> 300"}
    (slow,) = [r for g in shipped_file["groups"] for r in g["rules"] if r.get("alert") == "SMTPDeliverySlow"]
    assert slow["expr"].endswith(")) > 300")
    slow["expr"] = slow["expr"].removesuffix(" 300") + " 5"
    assert without_for(loaded_file) == without_for(shipped_file)

    loaded = {rule["name"]: rule for rule in stack.prometheus.rules() if rule["type"] == "alerting"}
    shipped = shipped_alerts()
    assert set(loaded) == {rule["alert"] for rule in shipped}
    for rule in shipped:
        running = loaded[rule["alert"]]
        assert running["duration"] == max(1, round(parse_duration(rule["for"]) * FOR_SCALE))
        assert running["labels"] == rule["labels"]
        assert running["annotations"] == rule["annotations"]


def test_alerts_fire_for_the_failing_targets_and_nothing_else(stack: Stack) -> None:
    expected = _expected(stack)
    wait_until(
        lambda: expected <= set(_active(stack, "firing")),
        lambda: _describe(set(_active(stack, "firing")), expected),
        timeout=75,
        check=stack.prometheus.check_running,
    )
    firing = set(_active(stack, "firing"))
    assert firing == expected, _describe(firing, expected)
    pending = set(_active(stack, "pending"))
    assert pending <= _may_be_pending(stack), (
        f"unexpected pending alerts: {sorted(pending - _may_be_pending(stack))}"
    )
    healthy = {stack.target(n) for n in ("healthy", "starttls")}
    assert not [key for key in firing | pending if key[2] in healthy]


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    """After the alerts above fired, every rule has been evaluated, none failed."""
    for rule in stack.prometheus.rules():
        assert rule["health"] == "ok", rule
        assert not rule.get("lastError"), rule


def test_alert_labels_and_annotations(stack: Stack) -> None:
    """Labels of the series (target, module, phase, instance, job), severity, and the
    annotations rendered with the real values, including the TargetDown description's query."""
    wait_until(
        lambda: _expected(stack) <= set(_active(stack, "firing")),
        lambda: _describe(set(_active(stack, "firing")), _expected(stack)),
        timeout=75,
    )
    firing = _active(stack, "firing")

    down = firing[("SMTPProbeTargetDown", SCHEDULED_JOB, stack.target("tempfail"))]
    assert down["labels"]["severity"] == "critical"
    assert down["labels"]["module"] == "smtp_full"
    assert down["labels"]["instance"] == stack.exporter.address
    assert down["annotations"]["summary"] == f"SMTP target {stack.target('tempfail')} is down"
    assert down["annotations"]["description"].endswith(
        "the last one failed in phase rcpt with reason reply_temporary."
    ), down["annotations"]["description"]

    temporary = firing[("SMTPProbeTemporaryFailures", SCHEDULED_JOB, stack.target("tempfail"))]
    assert temporary["labels"]["phase"] == "rcpt" and temporary["labels"]["reason"] == "reply_temporary"
    assert temporary["labels"]["severity"] == "warning"

    slow = firing[("SMTPProbeSlowPhase", SCHEDULED_JOB, stack.target("slow"))]
    assert slow["labels"]["phase"] == "rcpt"
    assert float(slow["value"]) > 5

    lost = firing[("SMTPProbeSTARTTLSNotOffered", SCHEDULED_JOB, stack.target("starttls_lost"))]
    assert lost["labels"]["module"] == "smtp_handshake" and lost["labels"]["phase"] == "starttls"

    expiring = firing[("SMTPProbeTLSCertificateExpiringSoon", SCHEDULED_JOB, stack.target("expiring"))]
    assert 6 * 86400 < float(expiring["value"]) < 7 * 86400
    assert "expires in 6d " in expiring["annotations"]["description"]

    exporter_down = firing[("SMTPExporterDown", SCHEDULED_JOB, stack.dead_exporter)]
    assert exporter_down["labels"]["severity"] == "critical"

    # Multi-target mode: the relabelled `target` and `module` reach the alert and its text.
    for job in (PROBE_JOB, STATIC_PROBE_JOB):
        target = stack.probed["banner_refused"]
        probe_down = firing[("SMTPProbeTargetDown", job, target)]
        assert probe_down["labels"]["module"] == "smtp_handshake"
        assert probe_down["labels"]["instance"] == target
        assert probe_down["annotations"]["summary"] == f"SMTP target {target} is down"
        assert probe_down["annotations"]["description"].endswith(
            "the last one failed in phase banner with reason reply_permanent."
        ), probe_down["annotations"]["description"]
    assert (
        firing[("SMTPProbeTargetDown", PROBE_JOB, stack.probed["banner_refused"])]["labels"]["team"] == "mail"
    )


def test_not_probed_alert_measures_the_interval(stack: Stack) -> None:
    """SMTPProbeTargetNotProbed cannot fire in a short test (its floor is 2 minutes), so check
    the part that can go wrong on real data: the interval it measures from the probe start
    times is there for every target and far below the 3 intervals that would fire it."""
    measured = stack.prometheus.query(
        f'(max_over_time(smtp_probe_last_run_timestamp_seconds{{job="{SCHEDULED_JOB}", module!="slow_envelope"}}[6h])'
        f' - min_over_time(smtp_probe_last_run_timestamp_seconds{{job="{SCHEDULED_JOB}", module!="slow_envelope"}}[6h]))'
        f' / changes(smtp_probe_last_run_timestamp_seconds{{job="{SCHEDULED_JOB}", module!="slow_envelope"}}[6h])'
    )
    assert {r["metric"]["target"] for r in measured} == {
        t.target for t in stack.scheduled.values() if t.module != "slow_envelope"
    }
    for result in measured:
        assert 0 < float(result["value"][1]) < 3, result  # configured: 1 s


def test_config_reload_failure_fires_and_resolves(stack: Stack) -> None:
    """A config that does not load: the exporter keeps the old one, the alert fires for that
    exporter; fixing the file resolves it. Runs last: it touches the shared exporter."""
    key = ("SMTPExporterConfigReloadFailed", SCHEDULED_JOB, stack.exporter.address)
    assert key not in _active(stack, "firing") and key not in _active(stack, "pending")
    stack.config_file.write_text(stack.config_text + "unknown_key: 1\n")
    try:
        status, body = stack.exporter.reload()
        assert status == 500 and "unknown_key" in body, (status, body)
        wait_until(lambda: key in _active(stack, "firing"), f"{key} firing", timeout=30)
        assert _active(stack, "firing")[key]["labels"]["severity"] == "warning"
        # Still probing with the previous config.
        before = stack.prometheus.query(f'sum(smtp_probes_total{{job="{SCHEDULED_JOB}"}})')
        time.sleep(2)
        after = stack.prometheus.query(f'sum(smtp_probes_total{{job="{SCHEDULED_JOB}"}})')
        assert float(after[0]["value"][1]) > float(before[0]["value"][1])
    finally:
        stack.config_file.write_text(stack.config_text)
    status, body = stack.exporter.reload()
    assert status == 200, body
    wait_until(
        lambda: key not in _active(stack, "firing") and key not in _active(stack, "pending"),
        f"{key} resolved",
        timeout=30,
    )
