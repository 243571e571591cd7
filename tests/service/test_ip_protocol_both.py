"""`ip_protocol: both` in scheduled mode (issue #13): each family probed as its own series, with
the label ip_protocol="4"|"6" and no unlabelled series; /probe gives one result for both. Real
sockets on 127.0.0.1 and ::1 and the loopback DNS server for a name with A and AAAA."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.probe.test_dns import needs_ipv6  # noqa: F401  (a fixture)
from tests.probe.test_failover import silent_ipv6
from tests.servers import scripted
from tests.servers.dns_server import DnsServer
from tests.servers.scripted import ScriptedServer
from tests.service.conftest import running_exporter, sample_labels, sample_value, wait_for

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]

pytestmark = pytest.mark.usefixtures("needs_ipv6")


def _config(write_config: Callable[[str], Path], dns: DnsServer, port: int, mx_mode: str = "primary") -> Path:
    return write_config(
        f"""
modules:
  both:
    ip_protocol: both
    mx: true
    port: {port}
    timeout: 2s
    connect_timeout: 500ms
    ehlo: probe.test
    dns: {{nameservers: ["{dns.nameserver}"], timeout: 500ms}}
targets:
  - {{target: mail.test, module: both, mx_mode: {mx_mode}, interval: 3s, labels: {{site: fra}}}}
"""
    )


@pytest.fixture
def dns(dns_server: Callable[..., DnsServer]) -> DnsServer:
    return dns_server(
        {
            "mail.test": {"MX": ["10 mx.dual.test."]},
            "mx.dual.test": {"A": "127.0.0.1", "AAAA": "::1"},
        }
    )


async def test_each_family_its_own_series(
    write_config: Callable[[str], Path], dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(scripted.minimal_conversation(), hosts=("127.0.0.1", "::1"))
    async with running_exporter(_config(write_config, dns, server.port)) as running:
        await running.wait_metric("smtp_probe_success", target="mail.test", ip_protocol="6")
        text = await running.wait_metric("smtp_probe_success", target="mail.test", ip_protocol="4")
        assert sorted(map(sorted, map(dict.items, sample_labels(text, "smtp_probe_success")))) == [
            [("ip_protocol", "4"), ("module", "both"), ("site", "fra"), ("target", "mail.test")],
            [("ip_protocol", "6"), ("module", "both"), ("site", "fra"), ("target", "mail.test")],
        ]  # no series without the label
        for family in ("4", "6"):
            assert sample_value(text, "smtp_probe_success", ip_protocol=family) == 1
            assert sample_value(text, "smtp_probe_ip_protocol", ip_protocol=family) == int(family)
            assert sample_value(text, "smtp_probe_attempts", ip_protocol=family) == 1
        peers = {":" in str(connection.peer[0]) for connection in server.connections}
        assert peers == {True, False}

        # The status page names each series and links to its own transcript.
        status, page = await running.get("/")
        assert status == 200
        assert "mail.test (IPv6)" in page and "mail.test (IPv4)" in page
        query = urllib.parse.urlencode({"target": "mail.test", "module": "both", "ip_protocol": "6"})
        status, transcript = await running.get(f"/transcript?{query}")
        assert status == 200, transcript
        assert f"connecting to ::1 port {server.port}" in transcript
        assert "connecting to 127.0.0.1" not in transcript

        # /probe: one result for both families.
        status, body = await running.get("/probe?target=mail.test&module=both&debug=true")
        assert status == 200
        assert "probe_success 1\n" in body and "smtp_probe_attempts 2\n" in body
        assert "::1" in body and "127.0.0.1" in body


async def test_a_silent_ipv6_path_is_its_series_down(
    write_config: Callable[[str], Path], dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(scripted.minimal_conversation())  # 127.0.0.1 only
    with silent_ipv6(server.port):
        async with running_exporter(_config(write_config, dns, server.port, "each")) as running:
            labels = {"target": "mail.test", "mx_host": "mx.dual.test"}
            await running.wait_metric("smtp_probe_success", ip_protocol="6", **labels)
            text = await running.wait_metric("smtp_probe_success", ip_protocol="4", **labels)
            assert sample_value(text, "smtp_probe_success", ip_protocol="6", **labels) == 0
            assert sample_value(text, "smtp_probe_success", ip_protocol="4", **labels) == 1
            assert (
                sample_value(
                    text,
                    "smtp_probe_last_failure_info",
                    ip_protocol="6",
                    phase="connect",
                    reason="timeout",
                    **labels,
                )
                == 1
            )
            assert len(sample_labels(text, "smtp_probe_success")) == 2
            assert all("ip_protocol" in found for found in sample_labels(text, "smtp_probe_success"))

            # /probe fails, since one family does, and lists both attempts.
            body = ""

            async def probed() -> bool:
                nonlocal body
                _status, body = await running.get("/probe?target=mail.test&module=both")
                return "probe_success 0\n" in body

            await wait_for(probed, "a failed /probe")
            assert "smtp_probe_attempts 2\n" in body
