"""`ip_protocol: both` in one result (issue #13), as /probe and the CLI give it: IPv6, then IPv4,
failed when either fails, both probes' attempts listed. Real sockets on 127.0.0.1 and ::1 and
the loopback DNS server for a name with A and AAAA; a silent path is a full-backlog listener."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from smtp_exporter.config.loader import ConfigError, load_config_text
from smtp_exporter.config.schema import DNSConfig, IPProtocol, ModuleConfig
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import ProbeResult
from smtp_exporter.presentation import probe_json
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module
from tests.probe.test_command import ENTRY, REPO
from tests.probe.test_dns import needs_ipv6  # noqa: F401  (a fixture)
from tests.probe.test_failover import silent_ipv6
from tests.servers import scripted
from tests.servers.dns_server import DnsServer
from tests.servers.scripted import ScriptedServer

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]

RECORDS = {
    "dual.test": {"A": "127.0.0.1", "AAAA": "::1"},
    "bad4.test": {"A": "127.0.0.3", "AAAA": "::1"},  # nothing listens on 127.0.0.3
    "only4.test": {"A": "127.0.0.1"},
    "mail.test": {"MX": ["10 mx.dual.test."]},
    "mx.dual.test": {"A": "127.0.0.1", "AAAA": "::1"},
}

pytestmark = pytest.mark.usefixtures("needs_ipv6")


@pytest.fixture
def dns(dns_server: Callable[..., DnsServer]) -> DnsServer:
    return dns_server(RECORDS)


@pytest.fixture
async def dual(scripted_server: ScriptedFactory) -> ScriptedServer:
    """One scripted SMTP server listening on 127.0.0.1 and ::1, the same port."""
    return await scripted_server(scripted.minimal_conversation(), hosts=("127.0.0.1", "::1"))


def _both(dns: DnsServer, port: int, **changes: object) -> ModuleConfig:
    return module(
        port=port,
        ip_protocol=IPProtocol.BOTH,
        dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0),
        **changes,
    )


def _attempts(result: ProbeResult) -> list[tuple[str, int, str, str | None]]:
    return [
        (a.address, a.family, a.outcome.value, None if a.reason is None else a.reason.value)
        for a in result.attempts
    ]


def _peer_families(server: ScriptedServer) -> list[int]:
    return [6 if ":" in str(connection.peer[0]) else 4 for connection in server.connections]


async def test_both_families_probed_ipv6_then_ipv4(dns: DnsServer, dual: ScriptedServer) -> None:
    result = await Prober().probe(*compiled("dual.test", "m", _both(dns, dual.port)))
    assert result.success, describe(result)
    assert _attempts(result) == [("::1", 6, "connected", None), ("127.0.0.1", 4, "connected", None)]
    assert _peer_families(dual) == [6, 4]  # the server saw one connection of each, IPv6 first
    lines = [line.text for line in result.transcript]
    ip6 = lines.index(f"connecting to ::1 port {dual.port}")
    ip4 = lines.index(f"connecting to 127.0.0.1 port {dual.port}")
    assert ip6 < ip4  # one transcript telling both probes, in order
    assert result.address is not None and result.address.family == 4
    assert not result.fallback
    body = render_probe_result(result, openmetrics=False).decode()
    assert "probe_success 1\n" in body and "smtp_probe_attempts 2\n" in body
    assert "smtp_probe_ip_protocol 4\n" in body
    assert [a["family"] for a in probe_json(result)["attempts"]] == [6, 4]


async def test_silent_ipv6_fails_the_probe_and_lists_both_attempts(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(scripted.minimal_conversation())  # 127.0.0.1 only
    settings = _both(dns, server.port, timeout=3.0, connect_timeout=0.5)
    with silent_ipv6(server.port):
        result = await Prober().probe(*compiled("dual.test", "m", settings))
    assert not result.success
    assert _attempts(result) == [("::1", 6, "failed", "timeout"), ("127.0.0.1", 4, "connected", None)]
    # IPv4 worked: what failed is IPv6's, its only failure.
    assert result.failure is not None
    assert (result.failure.phase.value, result.failure.reason.value) == ("connect", "timeout")
    assert "::1" in result.failure.message
    body = render_probe_result(result, openmetrics=False).decode()
    assert "probe_success 0\n" in body and "smtp_probe_attempts 2\n" in body
    assert 'smtp_probe_attempt_failures_total{reason="timeout"} 1\n' in body
    assert "smtp_probe_fallback 0\n" in body


async def test_failing_ipv4_fails_the_probe(dns: DnsServer, dual: ScriptedServer) -> None:
    result = await Prober().probe(*compiled("bad4.test", "m", _both(dns, dual.port)))
    assert not result.success
    assert _attempts(result) == [("::1", 6, "connected", None), ("127.0.0.3", 4, "failed", "connect_refused")]
    assert result.failure is not None and result.failure.reason.value == "connect_refused"
    assert _peer_families(dual) == [6]


async def test_a_missing_family_fails_in_resolve(dns: DnsServer, dual: ScriptedServer) -> None:
    """No AAAA: both paths cannot work, whatever IPv4 does."""
    result = await Prober().probe(*compiled("only4.test", "m", _both(dns, dual.port)))
    assert not result.success
    assert result.failure is not None
    assert (result.failure.phase.value, result.failure.reason.value) == ("resolve", "dns_error")
    assert "no AAAA records" in result.failure.message
    assert _attempts(result) == [("127.0.0.1", 4, "connected", None)]


async def test_an_ip_literal_target_has_one_family_only(dual: ScriptedServer, dns: DnsServer) -> None:
    result = await Prober().probe(*compiled(f"127.0.0.1:{dual.port}", "m", _both(dns, dual.port)))
    assert not result.success
    assert result.failure is not None and result.failure.reason.value == "network_unreachable"
    assert "no IPv6 address to connect to" in result.failure.message
    assert _attempts(result) == [("127.0.0.1", 4, "connected", None)]


async def test_mail_domain_both_families_of_the_mx(dns: DnsServer, dual: ScriptedServer) -> None:
    result = await Prober().probe(*compiled("mail.test", "m", _both(dns, dual.port, mx=True)))
    assert result.success, describe(result)
    assert [(a.mx_host, a.family) for a in result.attempts] == [("mx.dual.test", 6), ("mx.dual.test", 4)]


async def test_cli_json_lists_both_attempts_and_exit_status(
    dns: DnsServer, dual: ScriptedServer, tmp_path: Path
) -> None:
    config = tmp_path / "c.yml"
    config.write_text(
        f"modules:\n  both:\n    ip_protocol: both\n    port: {dual.port}\n    ehlo: probe.test\n"
        f"    timeout: 3s\n    dns: {{nameservers: ['{dns.nameserver}'], timeout: 1s}}\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    async def probe(target: str) -> tuple[int, dict[str, object]]:
        # A subprocess awaited on this loop: the scripted server runs on it too.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ENTRY, "--config.file", str(config), "--module", "both",
            "--output", "json", target,
            stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, json.loads(out)

    status, output = await probe("dual.test")
    assert status == 0, output
    attempts = output["attempts"]
    assert isinstance(attempts, list)
    assert [(a["address"], a["family"], a["outcome"]) for a in attempts] == [
        ("::1", 6, "connected"),
        ("127.0.0.1", 4, "connected"),
    ]
    status, output = await probe("bad4.test")
    assert status == 1
    assert output["success"] is False
    failure = output["failure"]
    assert isinstance(failure, dict) and failure["reason"] == "connect_refused"
    assert len(output["attempts"]) == 2  # type: ignore[arg-type]


def test_config() -> None:
    config = load_config_text("modules:\n  m:\n    ip_protocol: both\n", source="t.yml")
    assert config.modules["m"].ip_protocol is IPProtocol.BOTH
    for body, message in (
        (
            "    ip_protocol: ipv6\n",
            'ip_protocol: invalid value "ipv6": must be one of auto, ip4, ip6, prefer_ip4, both',
        ),
        (
            "    ip_protocol: both\n    source_ip_address: 127.0.0.1\n",
            "source_ip_address: an IPv4 source contradicts ip_protocol: both "
            "(its IPv6 probe could never connect)",
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config_text(f"modules:\n  m:\n{body}", source="t.yml")
        assert str(caught.value).endswith(f"modules.m.{message}"), str(caught.value)
