"""The exposition itself: promtool-clean for healthy and failing targets (the status page in a
real browser is tests/service/test_status_page.py)."""

from __future__ import annotations

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
