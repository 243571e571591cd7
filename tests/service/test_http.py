"""The HTTP endpoints of a running exporter: /probe, errors, content negotiation, lifecycle pages."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.scripted import ScriptedServer, silence
from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import running_exporter, sample_labels, sample_value, wait_for

NO_TARGETS = """
modules:
  envelope: {transaction: envelope, timeout: 3s, ehlo: probe.test, mail_from: probe@test, rcpt_to: [postmaster@test]}
  slow: {timeout: 8s}
http_probe: {max_concurrent: 1}
"""


async def test_probe_success_and_failure(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink, fault_server: Callable[..., AiosmtpdServer]
) -> None:
    failing = fault_server("mail", 451, "4.3.0", "Try later")
    async with running_exporter(write_config(NO_TARGETS)) as running:
        status, text = await running.get("/probe", params={"target": smtp_sink.target, "module": "envelope"})
        assert status == 200, text
        assert sample_value(text, "probe_success") == 1
        assert sample_value(text, "smtp_probe_success") == 1
        assert sample_value(text, "probe_duration_seconds") > 0
        assert sample_value(text, "smtp_probe_reply_code", phase="rcpt") == 250
        # No target/module labels: Prometheus' relabelling sets instance.
        for labels in sample_labels(text, "smtp_probe_phase_duration_seconds"):
            assert set(labels) == {"phase"}

        status, text = await running.get("/probe", params={"target": failing.target, "module": "envelope"})
        assert status == 200, text
        assert sample_value(text, "probe_success") == 0
        assert sample_value(text, "smtp_probe_reply_code", phase="mail") == 451
        assert sample_value(text, "smtp_probe_last_failure_info", phase="mail", reason="reply_temporary") == 1
        assert sample_value(text, "smtp_probe_phase_duration_seconds", phase="rcpt") is None

        status, text = await running.get(
            "/probe", params={"target": failing.target, "module": "envelope", "debug": "true"}
        )
        assert status == 200
        assert "451 4.3.0 Try later" in text  # the transcript
        assert "reason=reply_temporary" in text
        assert 'smtp_probe_reply_code{phase="mail"} 451' in text

        metrics = await running.metrics()
        assert sample_value(metrics, "smtp_exporter_probe_requests_total", module="envelope", code="200") == 3


async def test_probe_request_errors(write_config: Callable[[str], Path], smtp_sink: SmtpSink) -> None:
    config = NO_TARGETS + "  allowed_targets: ['127.0.0.1:" + str(smtp_sink.port) + "']\n"
    config = config.replace("http_probe: {max_concurrent: 1}\n", "http_probe:\n  max_concurrent: 1\n")
    async with running_exporter(write_config(config)) as running:
        assert (await running.get("/probe", params={"module": "envelope"}))[0] == 400
        status, text = await running.get("/probe", params={"target": "bad host!", "module": "envelope"})
        assert status == 400 and "invalid" in text
        status, text = await running.get("/probe", params={"target": "[::1", "module": "envelope"})
        assert status == 400
        status, text = await running.get("/probe", params={"target": smtp_sink.target, "module": "nope"})
        assert status == 400 and "unknown module" in text
        status, text = await running.get("/probe", params={"target": "127.0.0.1:26", "module": "envelope"})
        assert status == 403, text
        status, text = await running.get(
            "/probe", params={"target": "mail.example.org", "module": "envelope"}
        )
        assert status == 403, text
        status, text = await running.get("/probe", params={"target": smtp_sink.target, "module": "envelope"})
        assert status == 200 and sample_value(text, "probe_success") == 1

        metrics = await running.metrics()
        assert sample_value(metrics, "smtp_exporter_probe_requests_total", module="envelope", code="400") == 3
        # Unknown module names are not label values (they would be series on demand).
        assert sample_value(metrics, "smtp_exporter_probe_requests_total", module="", code="400") == 1
        assert sample_value(metrics, "smtp_exporter_probe_requests_total", module="envelope", code="403") == 2
        assert sample_value(metrics, "smtp_exporter_probe_requests_total", module="nope") is None


async def test_probe_concurrency_limit_and_scrape_timeout(
    write_config: Callable[[str], Path], scripted_server: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    silent = await scripted_server(silence())
    async with running_exporter(write_config(NO_TARGETS)) as running:
        started = time.monotonic()
        first = asyncio.ensure_future(
            running.get(
                "/probe",
                params={"target": silent.target, "module": "slow"},
                headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"},
            )
        )
        await asyncio.sleep(0.3)
        status, text = await running.get("/probe", params={"target": silent.target, "module": "slow"})
        assert status == 503, text
        status, text = await first
        # The module allows 8s; the scrape timeout (2s - 0.5s offset) wins.
        assert time.monotonic() - started < 6
        assert status == 200
        assert sample_value(text, "probe_success") == 0
        assert sample_value(text, "smtp_probe_last_failure_info", phase="banner", reason="timeout") == 1
        assert sample_value(text, "probe_duration_seconds") < 3
        metrics = await running.metrics()
        assert sample_value(metrics, "smtp_exporter_probe_requests_total", module="slow", code="503") == 1


async def test_negotiation_gzip_and_other_endpoints(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink
) -> None:
    config = NO_TARGETS + f"targets:\n  - {{target: '{smtp_sink.target}', module: envelope, interval: 4s}}\n"
    async with running_exporter(write_config(config)) as running:
        await running.wait_metric("smtp_probe_success")
        async with running.session.get(
            running.url + "/metrics",
            headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
        ) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            body = await response.text()
        assert body.endswith("# EOF\n")
        families = {family.name: family for family in parse_openmetrics(body)}
        assert families["smtp_probes"].type == "counter"
        assert families["smtp_probe_extension"].type == "info"
        assert families["smtp_exporter_build"].type == "info"
        assert families["smtp_probe_duration_distribution_seconds"].type == "histogram"

        async with running.session.get(
            running.url + "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        ) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert response.headers["Content-Encoding"] == "gzip"
            plain = gzip.decompress(await response.read()).decode()
        assert "# EOF" not in plain
        assert sample_value(plain, "smtp_probe_success", target=smtp_sink.target) == 1

        assert await running.get("/-/healthy") == (200, "Healthy\n")
        assert await running.get("/-/ready") == (200, "Ready\n")
        status, text = await running.get("/config")
        assert status == 200 and "envelope:" in text and smtp_sink.target in text
        assert (await running.get("/-/reload"))[0] == 405
        assert (await running.get("/nope"))[0] == 404
        status, text = await running.get(
            "/transcript", params={"target": smtp_sink.target, "module": "envelope"}
        )
        assert status == 200 and "250" in text and "SUCCESS" in text
        assert (await running.get("/transcript", params={"target": "x", "module": "envelope"}))[0] == 404
        status, page = await running.get("/")
        assert status == 200 and smtp_sink.target in page

        # Oversized request lines and headers are refused, not buffered.
        status, _ = await running.get("/probe", params={"target": "a" * 20000})
        assert status in (400, 414)
        async with (
            aiohttp.ClientSession() as session,
            session.get(running.url + "/-/healthy", headers={"X-Big": "b" * 20000}) as response,
        ):
            assert response.status in (400, 431)
        assert await running.get("/-/healthy") == (200, "Healthy\n")  # still serving


async def test_graceful_stop_waits_for_running_probes_and_reports_not_ready(
    write_config: Callable[[str], Path], scripted_server: Callable[..., Awaitable[ScriptedServer]]
) -> None:
    silent = await scripted_server(silence())
    config = write_config(
        "scheduler: {shutdown_grace_period: 20s}\nmodules:\n  slow: {timeout: 2s}\n"
        f"targets:\n  - {{target: '{silent.target}', module: slow, interval: 3s}}\n"
    )
    async with running_exporter(config) as running:
        exporter = running.exporter
        await wait_for(lambda: exporter.stats.probes_in_flight == 1, "the probe to start")
        started = time.monotonic()
        stopping = asyncio.ensure_future(exporter.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waiting for the running probe, within the grace period
        assert await running.get("/-/ready") == (503, "Not ready\n")
        await stopping
        # The probe ended at its own deadline (2s), well before the 20s grace period.
        assert time.monotonic() - started < 10
        assert len(exporter.store) == 1  # and its result was kept


async def test_the_history_feeds_the_history_page_and_transcripts(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink, fault_server: Callable[..., AiosmtpdServer]
) -> None:
    failing = fault_server("mail", 451, "4.3.0", "Try later")
    config = NO_TARGETS + "metrics: {history_limit: 2}\n"
    async with running_exporter(write_config(config)) as running:
        for target in (failing.target, smtp_sink.target, smtp_sink.target):
            status, _ = await running.get("/probe", params={"target": target, "module": "envelope"})
            assert status == 200
        status, page = await running.get("/history")
        assert status == 200
        recent = page.partition('id="recent"')[2]
        # The newest two of three /probe results, each linked by its id; the first fell out.
        assert recent.count('<tr class="recent"') == 2 and "/probe" in recent
        assert "/transcript?id=3" in recent and "/transcript?id=2" in recent
        assert "/transcript?id=1" not in recent and failing.target not in recent
        status, text = await running.get("/transcript", params={"id": "3"})
        assert status == 200 and f"SUCCESS {smtp_sink.target}" in text and "250" in text
        status, text = await running.get("/transcript", params={"id": "1"})
        assert status == 404 and "metrics.history_limit" in text
        assert (await running.get("/transcript", params={"id": "x" * 100}))[0] == 404


async def test_a_transcript_that_left_the_history_still_shows_the_phases(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink, fault_server: Callable[..., AiosmtpdServer]
) -> None:
    failing = fault_server("mail", 451, "4.3.0", "Try later")
    config = NO_TARGETS + (
        "metrics: {history_limit: 0}\n"
        "targets:\n"
        f"  - {{target: '{smtp_sink.target}', module: envelope, interval: 5s}}\n"
        f"  - {{target: '{failing.target}', module: envelope, interval: 5s}}\n"
    )
    async with running_exporter(write_config(config)) as running:
        await running.wait_metric("smtp_probe_success", target=smtp_sink.target)
        await running.wait_metric("smtp_probe_success", target=failing.target)
        status, text = await running.get(
            "/transcript", params={"target": smtp_sink.target, "module": "envelope"}
        )
        assert status == 200, text
        assert "no longer kept" in text and "metrics.history_limit" in text
        assert "Phases:" in text and "rcpt" in text and f"SUCCESS {smtp_sink.target}" in text
        # A failure keeps its transcript whatever the history holds.
        status, text = await running.get(
            "/transcript", params={"target": failing.target, "module": "envelope"}
        )
        assert status == 200 and "451 4.3.0 Try later" in text and "no longer kept" not in text
        status, page = await running.get("/history")
        assert status == 200 and page.partition('id="recent"')[2].count('<tr class="recent"') == 0


async def test_a_reload_resizes_the_history(write_config: Callable[[str], Path], smtp_sink: SmtpSink) -> None:
    path = write_config(NO_TARGETS + "metrics: {history_limit: 3}\n")

    async def recent_rows() -> int:
        status, page = await running.get("/history")
        assert status == 200
        return page.partition('id="recent"')[2].count('<tr class="recent"')

    async with running_exporter(path, watch_interval=3600) as running:
        for _ in range(3):
            assert (await running.get("/probe", params={"target": smtp_sink.target, "module": "envelope"}))[
                0
            ] == 200
        assert await recent_rows() == 3
        path.write_text(NO_TARGETS + "metrics: {history_limit: 1}\n")
        async with running.session.post(running.url + "/-/reload") as response:
            assert response.status == 200, await response.text()
        assert await recent_rows() == 1  # the newest kept
        status, text = await running.get("/transcript", params={"id": "3"})
        assert status == 200 and f"SUCCESS {smtp_sink.target}" in text
        assert (await running.get("/transcript", params={"id": "2"}))[0] == 404
