"""Resolution and MX against a real authoritative DNS server on loopback (tests/servers/dns_server.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from smtp_exporter.config.schema import DNSConfig, IPProtocol, ModuleConfig
from smtp_exporter.model import FailureReason, MXInfo, Phase
from smtp_exporter.probe import Prober
from tests.helpers import skip_or_fail
from tests.probe.common import Stopwatch, compiled, describe, module, names
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer, Records

DnsFactory = Callable[..., DnsServer]

RECORDS: Records = {
    "host.example.test": {"A": "127.0.0.1"},
    "v6only.example.test": {"AAAA": "::1"},
    "dual.example.test": {"A": "127.0.0.1", "AAAA": "::1"},
    # The preferred MX is down (::1, where nothing listens on the port), the second is up.
    "example.test": {"MX": ["20 mx2.example.test.", "10 mx1.example.test."]},
    "mx1.example.test": {"AAAA": "::1"},
    "mx2.example.test": {"A": "127.0.0.1"},
    "both.example.test": {"MX": ["10 mx2.example.test.", "20 mx3.example.test."]},
    "mx3.example.test": {"A": "127.0.0.1"},
    "lame.example.test": {"MX": ["10 missing.example.test.", "20 mx2.example.test."]},
    "nullmx.example.test": {"MX": "0 ."},
    "nomx.example.test": {"A": "127.0.0.1"},
    "alias.example.test": {"CNAME": "host.example.test."},
}


def ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def needs_ipv6() -> None:
    if not ipv6_usable():
        skip_or_fail("::1 is not usable on this host")


@pytest.fixture
def dns(dns_server: DnsFactory) -> DnsServer:
    return dns_server(RECORDS, servfail=["broken.example.test"], delays={"slow.example.test": 3.0})


def _module(dns: DnsServer, server_port: int, *, dns_timeout: float = 1.0, **changes: Any) -> ModuleConfig:
    return module(
        port=server_port, dns=DNSConfig(nameservers=(dns.nameserver,), timeout=dns_timeout), **changes
    )


async def test_name_resolves_and_connects(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(*compiled("host.example.test", "m", _module(dns, smtp_server.port)))
    assert result.success, describe(result)
    assert names(result) == ["resolve", "connect", "banner", "ehlo", "quit"]
    assert result.target == "host.example.test"
    assert result.address is not None
    assert (result.address.ip, result.address.port, result.address.family) == (
        "127.0.0.1",
        smtp_server.port,
        4,
    )
    asked = {(q.name, q.rdtype) for q in dns.queries}
    assert ("host.example.test.", "A") in asked


async def test_target_port_overrides_module_port(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(*compiled(f"host.example.test:{smtp_server.port}", "m", _module(dns, 1)))
    assert result.success, describe(result)
    assert result.address is not None and result.address.port == smtp_server.port


async def test_cname_is_followed(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(*compiled("alias.example.test", "m", _module(dns, smtp_server.port)))
    assert result.success, describe(result)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("nothere.example.test", FailureReason.DNS_NXDOMAIN),
        ("broken.example.test", FailureReason.DNS_ERROR),
        ("slow.example.test", FailureReason.DNS_ERROR),
        ("example.test", FailureReason.DNS_ERROR),  # MX records only, no address
        ("nomx.example.test.", None),  # control: a trailing dot is fine
    ],
    ids=["nxdomain", "servfail", "slow", "no-address", "control"],
)
async def test_resolution_failures(
    dns: DnsServer, smtp_server: AiosmtpdServer, name: str, reason: FailureReason | None
) -> None:
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(name, "m", _module(dns, smtp_server.port, dns_timeout=0.5, timeout=3.0))
        )
    if reason is None:
        assert result.success, describe(result)
        return
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, reason)
    assert "connect" not in names(result)
    assert result.address is None
    assert smtp_server.connections == []
    # The DNS timeout, not the module's, bounds a slow answer.
    assert watch.seconds < 0.5 + 1.0


async def test_slow_dns_hits_the_probe_deadline(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled("slow.example.test", "m", _module(dns, smtp_server.port, dns_timeout=2.0, timeout=0.5))
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, FailureReason.TIMEOUT)
    assert result.duration_seconds < 1.0 and watch.seconds < 1.5


async def test_mx_second_host_when_first_refuses(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(*compiled("example.test", "mx", _module(dns, smtp_server.port, mx=True)))
    assert result.success, describe(result)
    assert names(result)[:2] == ["resolve", "connect"]
    assert result.mx == MXInfo("mx2.example.test", 20)
    assert result.address is not None
    assert (result.address.ip, result.address.port) == ("127.0.0.1", smtp_server.port)
    transcript = "\n".join(line.text for line in result.transcript)
    assert f"::1 port {smtp_server.port} (MX mx1.example.test)" in transcript
    assert len(smtp_server.connections) == 1


async def test_mx_host_that_does_not_resolve_is_skipped(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled("lame.example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert result.success, describe(result)
    assert result.mx == MXInfo("mx2.example.test", 20)


async def test_null_mx(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled("nullmx.example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, FailureReason.NULL_MX)
    assert smtp_server.connections == []


async def test_no_mx_falls_back_to_the_domain(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled("nomx.example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert result.success, describe(result)
    assert result.mx == MXInfo("nomx.example.test", 0)
    assert result.address is not None and result.address.ip == "127.0.0.1"
    asked = [(q.name, q.rdtype) for q in dns.queries]
    assert asked[0] == ("nomx.example.test.", "MX")


async def test_mx_nxdomain(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled("nothere.example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, FailureReason.DNS_NXDOMAIN)


async def test_probe_each_mx(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    results = await Prober().probe_each_mx(
        *compiled("example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert [r.mx for r in results] == [MXInfo("mx1.example.test", 10), MXInfo("mx2.example.test", 20)]
    down, up = results
    assert down.failure is not None, describe(down)
    assert (down.failure.phase, down.failure.reason) in {
        (Phase.CONNECT, FailureReason.CONNECT_REFUSED),
        (Phase.CONNECT, FailureReason.NETWORK_UNREACHABLE),
    }
    assert up.success, describe(up)
    assert up.address is not None and up.address.ip == "127.0.0.1"
    assert all(r.target == "example.test" for r in results)
    assert all(names(r)[0] == "resolve" for r in results)


async def test_probe_each_mx_all_up(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    results = await Prober().probe_each_mx(
        *compiled("both.example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert [(r.mx, r.success) for r in results] == [
        (MXInfo("mx2.example.test", 10), True),
        (MXInfo("mx3.example.test", 20), True),
    ]
    assert len(smtp_server.connections) == 2
    assert await smtp_server.wait_closed()


@pytest.mark.parametrize(
    ("domain", "reason"),
    [("nullmx.example.test", FailureReason.NULL_MX), ("broken.example.test", FailureReason.DNS_ERROR)],
)
async def test_probe_each_mx_lookup_failure(
    dns: DnsServer, smtp_server: AiosmtpdServer, domain: str, reason: FailureReason
) -> None:
    (result,) = await Prober().probe_each_mx(*compiled(domain, "mx", _module(dns, smtp_server.port, mx=True)))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, reason)
    assert result.mx is None


@pytest.mark.usefixtures("needs_ipv6")
async def test_ipv6_literal_target(smtp_server_factory: Callable[..., AiosmtpdServer]) -> None:
    server = smtp_server_factory(host="::1")
    result = await Prober().probe(*compiled(f"[::1]:{server.port}", "m", module(ip_protocol=IPProtocol.IP6)))
    assert result.success, describe(result)
    assert result.address is not None
    assert (result.address.ip, result.address.port, result.address.family) == ("::1", server.port, 6)
    assert names(result)[0] == "connect"


@pytest.mark.usefixtures("needs_ipv6")
async def test_ip6_name(dns: DnsServer, smtp_server_factory: Callable[..., AiosmtpdServer]) -> None:
    server = smtp_server_factory(host="::1")
    result = await Prober().probe(
        *compiled("dual.example.test", "m", _module(dns, server.port, ip_protocol=IPProtocol.IP6))
    )
    assert result.success, describe(result)
    assert result.address is not None and (result.address.ip, result.address.family) == ("::1", 6)
    assert {q.rdtype for q in dns.queries} == {"AAAA"}


async def test_ip4_with_aaaa_only_name(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled("v6only.example.test", "m", _module(dns, smtp_server.port, ip_protocol=IPProtocol.IP4))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, FailureReason.DNS_ERROR)
    assert {q.rdtype for q in dns.queries} == {"A"}


@pytest.mark.usefixtures("needs_ipv6")
async def test_auto_falls_back_to_the_other_family(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    """auto: the IPv6 address first; nothing listens there, so IPv4 answers."""
    result = await Prober().probe(*compiled("dual.example.test", "m", _module(dns, smtp_server.port)))
    assert result.success, describe(result)
    assert result.address is not None and result.address.family == 4
    transcript = [line.text for line in result.transcript if line.direction == "*"]
    assert transcript[0] == f"connecting to ::1 port {smtp_server.port}"


async def test_probe_each_mx_without_mx(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    (result,) = await Prober().probe_each_mx(
        *compiled("nomx.example.test", "mx", _module(dns, smtp_server.port, mx=True))
    )
    assert result.success, describe(result)
    assert result.mx == MXInfo("nomx.example.test", 0)


async def test_truncated_udp_answers_retried_over_tcp(
    dns_server: DnsFactory, smtp_server: AiosmtpdServer
) -> None:
    dns = dns_server(RECORDS, truncate_udp=True)
    result = await Prober().probe(*compiled("example.test", "mx", _module(dns, smtp_server.port, mx=True)))
    assert result.success, describe(result)
    assert result.mx == MXInfo("mx2.example.test", 20)
    assert "tcp" in {q.transport for q in dns.queries}
