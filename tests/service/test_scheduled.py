"""Scheduled mode end to end: real SMTP servers behind a running exporter, scraped over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.scripted import BANNER, DEFAULT_REPLIES, Answer, ScriptedServer, Send, Step
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA
from tests.service.conftest import running_exporter, sample_labels, sample_value


async def test_healthy_and_failing_targets_with_static_labels(
    write_config: Callable[[str], Path],
    smtp_sink: SmtpSink,
    fault_server: Callable[..., AiosmtpdServer],
) -> None:
    failing = fault_server("rcpt", 550, "5.1.1", "No such user")
    config = write_config(
        f"""
modules:
  envelope: {{transaction: envelope, timeout: 900ms, ehlo: probe.test, mail_from: probe@test, rcpt_to: [postmaster@test]}}
targets:
  - target: {smtp_sink.target}
    module: envelope
    interval: 1s
    labels: {{team: mail, site: fra}}
  - target: {failing.target}
    module: envelope
    interval: 1s
"""
    )
    async with running_exporter(config) as running:
        ok = {"target": smtp_sink.target, "module": "envelope"}
        bad = {"target": failing.target, "module": "envelope"}
        await running.wait_metric("smtp_probe_success", **ok)
        text = await running.wait_metric("smtp_probe_success", **bad)

        assert sample_value(text, "smtp_probe_success", **ok, team="mail", site="fra") == 1
        assert sample_value(text, "smtp_probe_success", **bad) == 0
        assert sample_value(text, "smtp_probe_reply_code", **ok, phase="banner") == 220
        assert sample_value(text, "smtp_probe_reply_code", **ok, phase="rcpt") == 250
        assert sample_value(text, "smtp_probe_reply_code", **bad, phase="rcpt") == 550
        assert sample_value(text, "smtp_probe_enhanced_status_info", **bad, phase="rcpt", status="5.1.1") == 1
        assert (
            sample_value(text, "smtp_probe_last_failure_info", **bad, phase="rcpt", reason="reply_permanent")
            == 1
        )
        assert sample_value(text, "smtp_probe_last_failure_info", **ok) is None
        assert (
            sample_value(text, "smtp_probe_failures_total", **bad, phase="rcpt", reason="reply_permanent")
            >= 1
        )
        assert sample_value(text, "smtp_probe_ip_protocol", **ok) == 4
        assert sample_value(text, "smtp_probe_extension_info", **ok, extension="PIPELINING") == 1
        for labels in (ok, bad):
            # Same series shape whatever the outcome: these are always there.
            for name in (
                "smtp_probe_duration_seconds",
                "smtp_probe_last_run_timestamp_seconds",
                "smtp_probes_total",
                "smtp_probe_duration_distribution_seconds_count",
            ):
                assert sample_value(text, name, **labels) is not None, (name, labels)
            assert (
                sample_value(text, "smtp_probe_phase_duration_seconds", **labels, phase="connect") is not None
            )
        # Phases after the failure are absent for the failing target.
        assert sample_value(text, "smtp_probe_phase_duration_seconds", **bad, phase="rset") is None
        assert sample_value(text, "smtp_probe_phase_duration_seconds", **ok, phase="rset") is not None
        # Static labels only on the target that has them.
        for labels in sample_labels(text, "smtp_probe_success"):
            assert ("team" in labels) == (labels["target"] == smtp_sink.target)
        assert sample_value(text, "smtp_exporter_targets") == 2
        assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 1

        # Counters and histograms keep counting across probes.
        first = sample_value(text, "smtp_probes_total", **ok)
        assert first is not None

        async def counted_more() -> bool:
            later = sample_value(await running.metrics(), "smtp_probes_total", **ok)
            return later is not None and later > first

        from tests.service.conftest import wait_for

        await wait_for(counted_more, "a second probe of the healthy target")
        text = await running.metrics()
        count = sample_value(text, "smtp_probe_duration_distribution_seconds_count", **ok)
        inf = sample_value(text, "smtp_probe_duration_distribution_seconds_bucket", **ok, le="+Inf")
        assert count == inf == sample_value(text, "smtp_probes_total", **ok)


async def test_tls_facts_of_a_starttls_target(
    write_config: Callable[[str], Path], starttls_server: AiosmtpdServer, tls_ca: TestCA
) -> None:
    config = write_config(
        f"""
modules:
  tls: {{starttls: required, timeout: 900ms, tls_config: {{ca_file: {tls_ca.ca_file}, server_name: mail.test}}}}
targets:
  - {{target: "{starttls_server.target}", module: tls, interval: 1s}}
"""
    )
    async with running_exporter(config) as running:
        labels = {"target": starttls_server.target, "module": "tls"}
        text = await running.wait_metric("smtp_probe_success", **labels)
        assert sample_value(text, "smtp_probe_success", **labels) == 1
        assert sample_value(text, "smtp_probe_tls_cert_verified", **labels) == 1
        not_after = sample_value(text, "smtp_probe_tls_cert_not_after_timestamp_seconds", **labels)
        assert not_after is not None and not_after > 1.6e9
        versions = [
            s for s in sample_labels(text, "smtp_probe_tls_version_info") if s["target"] == labels["target"]
        ]
        assert versions and versions[0]["version"].startswith("TLS")
        assert sample_value(text, "smtp_probe_phase_duration_seconds", **labels, phase="ehlo_tls") is not None


async def test_scheduler_skips_overrunning_probe_and_counts_waits(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink, scripted_server: Callable[..., object]
) -> None:
    """A probe that outlives its interval makes the next one skip; a full semaphore makes probes wait."""
    import dataclasses

    from smtp_exporter.snapshot import load_snapshot
    from tests.servers.scripted import silence
    from tests.service.conftest import wait_for

    silent = await scripted_server(silence())  # type: ignore[operator]
    config_path = write_config(
        f"""
scheduler: {{max_concurrency: 1}}
modules:
  slow: {{timeout: 2500ms}}
targets:
  - {{target: "{silent.target}", module: slow, interval: 3s}}
  - {{target: "{smtp_sink.target}", module: slow, interval: 3s}}
"""
    )
    async with running_exporter(config_path) as running:
        # The loader refuses timeout >= interval; the scheduler must still cope with an
        # overrunning probe (a loaded loop, a slow DNS), so shrink the interval behind its back.
        snapshot = load_snapshot(str(config_path))
        targets = tuple(
            dataclasses.replace(t, config=dataclasses.replace(t.config, interval=0.5))
            for t in snapshot.targets
        )
        running.exporter.scheduler.apply(dataclasses.replace(snapshot, targets=targets))
        stats = running.exporter.stats
        await wait_for(lambda: stats.probes_skipped_total >= 2, "skipped probes")
        await wait_for(lambda: stats.probes_waited_total >= 1, "a probe waiting for the only slot")
        text = await running.metrics()
        assert sample_value(text, "smtp_exporter_probes_skipped_total") >= 2
        assert sample_value(text, "smtp_exporter_probes_waited_total") >= 1
        assert sample_value(text, "smtp_exporter_probes_in_flight") <= 1
        assert len(silent.connections) >= 1  # type: ignore[attr-defined]


async def test_extension_lines_follow_each_probe_when_the_offer_changes(
    write_config: Callable[[str], Path], scripted_server: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    # A series renders its extension lines again only when the offer differs from its previous
    # probe's (metrics/exposition.py): each probe's own offer must show, whatever came before.
    offers = {
        "A": b"250-mail.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n",
        "B": b"250-mail.test\r\n250-8BITMIME\r\n250 DSN\r\n",
    }
    plan = ["A", "A", "B", "B", "refused", "A", "A"]  # the n-th connection's server

    def script(n: int) -> list[Step]:
        kind = plan[min(n, len(plan) - 1)]
        if kind == "refused":
            return [Send(b"554 5.3.2 not now\r\n"), Answer(DEFAULT_REPLIES)]
        return [Send(BANNER), Answer({**DEFAULT_REPLIES, "EHLO": offers[kind]})]

    expected = {
        "A": {"PIPELINING", "SIZE", "8BITMIME"},
        "B": {"8BITMIME", "DSN"},
        "refused": set(),
    }
    server = await scripted_server(script)
    config = write_config(
        f"""
modules:
  envelope: {{transaction: envelope, timeout: 250ms, ehlo: probe.test, mail_from: probe@test, rcpt_to: [a@test]}}
targets:
  - {{target: '{server.target}', module: envelope, interval: 300ms}}
"""
    )
    seen: dict[int, set[str]] = {}
    async with running_exporter(config) as running:
        labels = {"target": server.target, "module": "envelope"}
        deadline = time.monotonic() + 30
        while len(seen) < len(plan) and time.monotonic() < deadline:
            text = await running.metrics()
            probes = sample_value(text, "smtp_probes_total", **labels)
            if probes is not None and 1 <= probes <= len(plan):
                offered = {
                    sample["extension"]
                    for sample in sample_labels(text, "smtp_probe_extension_info")
                    if sample["target"] == server.target
                }
                seen[int(probes)] = offered
            await asyncio.sleep(0.03)
    for probes, offered in seen.items():
        assert offered == expected[plan[probes - 1]], (probes, offered)
    # The transitions that matter were each scraped: A to B, B to nothing, nothing to A.
    assert {3, 5, 6} <= set(seen), seen
