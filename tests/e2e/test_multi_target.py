"""Multi-target mode through a real Prometheus: the /probe families arrive under each target,
with the `target` and `module` labels the relabelling sets, from both the scrape config that
prometheus-operator generates for the shipped Probe and the one in README.md."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import PROBE_JOB, STATIC_PROBE_JOB, Stack

JOBS = [PROBE_JOB, STATIC_PROBE_JOB]


def _by_target(stack: Stack, expr: str) -> dict[str, float]:
    result = stack.prometheus.query(expr)
    by_target = {}
    for sample in result:
        labels = sample["metric"]
        assert labels["instance"] == labels["target"], labels
        assert labels["module"] == "smtp_handshake", labels
        by_target[labels["target"]] = float(sample["value"][1])
    assert len(by_target) == len(result), result
    return by_target


def _probed(stack: Stack, job: str) -> dict[str, str]:
    return stack.probed if job == PROBE_JOB else stack.static_probed


@pytest.mark.parametrize("job", JOBS)
def test_success_per_target(stack: Stack, job: str) -> None:
    probed = _probed(stack, job)
    expected = {target: 0.0 if name == "banner_refused" else 1.0 for name, target in probed.items()}
    assert _by_target(stack, f'probe_success{{job="{job}"}}') == expected
    assert _by_target(stack, f'smtp_probe_success{{job="{job}"}}') == expected
    assert set(_by_target(stack, f'probe_duration_seconds{{job="{job}"}}')) == set(probed.values())
    assert set(_by_target(stack, f'smtp_probe_duration_seconds{{job="{job}"}}')) == set(probed.values())


@pytest.mark.parametrize("job", JOBS)
def test_per_probe_families(stack: Stack, job: str) -> None:
    probed = _probed(stack, job)
    healthy, starttls, refused = probed["healthy"], probed["starttls"], probed["banner_refused"]
    ehlo = _by_target(stack, f'smtp_probe_reply_code{{job="{job}", phase="ehlo"}}')
    assert ehlo[healthy] == 250 and ehlo[starttls] == 250 and refused not in ehlo
    assert _by_target(stack, f'smtp_probe_reply_code{{job="{job}", phase="banner"}}')[refused] == 554
    failure = stack.prometheus.query(f'smtp_probe_last_failure_info{{job="{job}"}}')
    assert [(f["metric"]["target"], f["metric"]["phase"], f["metric"]["reason"]) for f in failure] == [
        (refused, "banner", "reply_permanent")
    ]
    assert set(_by_target(stack, f'smtp_probe_tls_version_info{{job="{job}"}}')) == {
        target for name, target in probed.items() if name in ("starttls", "expiring")
    }
    assert _by_target(stack, f'smtp_probe_tls_cert_verified{{job="{job}"}}')[starttls] == 1
    phases = stack.prometheus.query(f'smtp_probe_phase_duration_seconds{{job="{job}", target="{starttls}"}}')
    assert {p["metric"]["phase"] for p in phases} >= {
        "connect",
        "banner",
        "ehlo",
        "starttls",
        "tls",
        "ehlo_tls",
    }


@pytest.mark.parametrize("job", JOBS)
def test_no_counters_in_multi_target_mode(stack: Stack, job: str) -> None:
    """As documented: counters and histograms across probes belong to scheduled mode."""
    for family in (
        "smtp_probes_total",
        "smtp_probe_failures_total",
        "smtp_probe_duration_distribution_seconds_count",
    ):
        assert stack.prometheus.query(f'{family}{{job="{job}"}}') == []
