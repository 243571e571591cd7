"""MX targets in scheduled mode: `mx_mode: each` gives one series per MX host, against a loopback DNS server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.servers.dns_server import DnsServer
from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import running_exporter, sample_labels, sample_value


async def test_mx_each_and_primary(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink, dns_server: Callable[..., DnsServer]
) -> None:
    dns = dns_server(
        {
            "example.test": {"MX": ["10 mx1.example.test.", "20 mx2.example.test."]},
            "mx1.example.test": {"A": "127.0.0.1"},
            "mx2.example.test": {"A": "127.0.0.1"},
        },
        servfail=["broken.test"],
    )
    config = write_config(
        f"""
modules:
  mx_check: &mx
    mx: true
    port: {smtp_sink.port}
    timeout: 900ms
    ip_protocol: ip4
    ehlo: probe.test
    dns: {{nameservers: ["{dns.nameserver}"], timeout: 500ms}}
  mx_primary: *mx
targets:
  - {{target: example.test, module: mx_check, mx_mode: each, interval: 1s, labels: {{site: fra}}}}
  - {{target: broken.test, module: mx_check, mx_mode: each, interval: 1s}}
  - {{target: example.test, module: mx_primary, mx_mode: primary, interval: 1s, labels: {{site: ber}}}}
"""
    )
    async with running_exporter(config) as running:
        each = {"target": "example.test", "module": "mx_check", "site": "fra"}
        await running.wait_metric("smtp_probe_success", **each, mx_host="mx1.example.test")
        text = await running.wait_metric("smtp_probe_success", **each, mx_host="mx2.example.test")
        await running.wait_metric("smtp_probe_success", target="broken.test")
        text = await running.wait_metric("smtp_probe_mx_info", site="ber")

        assert sample_value(text, "smtp_probe_success", **each, mx_host="mx1.example.test") == 1
        assert sample_value(text, "smtp_probe_success", **each, mx_host="mx2.example.test") == 1
        # The series has mx_host already: mx_info adds only the preference.
        assert (
            sample_value(text, "smtp_probe_mx_info", **each, mx_host="mx2.example.test", preference="20") == 1
        )
        # The MX lookup failed: one series without an MX host, down in resolve.
        assert sample_value(text, "smtp_probe_success", target="broken.test", mx_host="") == 0
        assert (
            sample_value(
                text, "smtp_probe_last_failure_info", target="broken.test", mx_host="", phase="resolve"
            )
            == 1
        )
        # Primary mode: one series, no mx_host label, mx_info names the host that answered.
        primary = [
            labels for labels in sample_labels(text, "smtp_probe_success") if labels.get("site") == "ber"
        ]
        assert primary == [{"target": "example.test", "module": "mx_primary", "site": "ber"}]
        assert (
            sample_value(text, "smtp_probe_mx_info", site="ber", mx_host="mx1.example.test", preference="10")
            == 1
        )
