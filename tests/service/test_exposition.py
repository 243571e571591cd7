"""The exposition itself: promtool-clean for healthy and failing targets, and the status page in a real browser."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import require_binary
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA
from tests.service.conftest import running_exporter


def _promtool_check(promtool: str, text: str) -> None:
    run = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(), run.stdout + run.stderr


async def test_metrics_and_probe_output_pass_promtool(
    write_config: Callable[[str], Path],
    smtp_sink: SmtpSink,
    fault_server: Callable[..., AiosmtpdServer],
    starttls_server: AiosmtpdServer,
    tls_ca: TestCA,
) -> None:
    promtool = require_binary("promtool")
    failing = fault_server("rcpt", 550, "5.1.1", "No such user")
    config = write_config(
        f"""
metrics: {{phase_histograms: true}}
modules:
  envelope: {{transaction: envelope, timeout: 900ms, ehlo: probe.test, mail_from: probe@test, rcpt_to: [a@test]}}
  tls: {{starttls: required, timeout: 900ms, tls_config: {{ca_file: {tls_ca.ca_file}, server_name: mail.test}}}}
targets:
  - {{target: '{smtp_sink.target}', module: envelope, interval: 1s, labels: {{team: "mail \\"core\\""}}}}
  - {{target: '{failing.target}', module: envelope, interval: 1s}}
  - {{target: '{starttls_server.target}', module: tls, interval: 1s}}
  - {{target: '127.0.0.1:1', module: envelope, interval: 1s}}
"""
    )
    async with running_exporter(config) as running:
        for target in (smtp_sink.target, failing.target, starttls_server.target, "127.0.0.1:1"):
            await running.wait_metric("smtp_probe_success", target=target)
        text = await running.metrics()
        assert "smtp_probe_tls_cert_info{" in text and 'reason="reply_permanent"' in text
        assert 'team="mail \\"core\\""' in text
        _promtool_check(promtool, text)
        for target, module in (
            (smtp_sink.target, "envelope"),
            (failing.target, "envelope"),
            ("127.0.0.1:1", "envelope"),
        ):
            status, body = await running.get("/probe", params={"target": target, "module": module})
            assert status == 200
            _promtool_check(promtool, body)


async def test_status_page_in_headless_chromium(
    write_config: Callable[[str], Path],
    smtp_sink: SmtpSink,
    fault_server: Callable[..., AiosmtpdServer],
    tmp_path: Path,
) -> None:
    chromium = require_binary("chromium")
    failing = fault_server("mail", 451, "4.3.0", "Try later")
    config = write_config(
        "modules:\n  envelope: {transaction: envelope, timeout: 900ms, ehlo: probe.test, mail_from: p@test}\n"
        "targets:\n"
        f"  - {{target: '{smtp_sink.target}', module: envelope, interval: 1s, labels: {{site: fra}}}}\n"
        f"  - {{target: '{failing.target}', module: envelope, interval: 1s}}\n"
    )
    async with running_exporter(config) as running:
        for target in (smtp_sink.target, failing.target):
            await running.wait_metric("smtp_probe_success", target=target)
        process = await asyncio.create_subprocess_exec(
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            running.url + "/",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        dom = stdout.decode()
        assert process.returncode == 0, stderr.decode()[-2000:]
        rows = [line for line in dom.splitlines() if '<tr class="target' in line]
        assert len(rows) == 2, dom[-3000:]
        healthy = next(row for row in rows if smtp_sink.target in row)
        broken = next(row for row in rows if failing.target in row)
        assert 'class="up"' in healthy and "site=fra" in healthy and "rcpt" in healthy
        assert 'class="down"' in broken and "mail / reply_temporary" in broken
        assert "/transcript?target=" in broken
