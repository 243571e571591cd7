"""ip_protocol auto: A and AAAA are looked up independently (issue #13), against the loopback DNS server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from smtp_exporter.config.schema import DNSConfig, IPProtocol, ModuleConfig
from smtp_exporter.model import FailureReason, Phase
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module, names
from tests.probe.test_dns import needs_ipv6  # noqa: F401  (a fixture)
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer, Records

RECORDS: Records = {
    "v4ok.example.test": {"A": "127.0.0.1", "AAAA": "::1"},
    "v6ok.example.test": {"A": "127.0.0.1", "AAAA": "::1"},
    "neither.example.test": {"A": "127.0.0.1", "AAAA": "::1"},
    "example.test": {"MX": "10 v4ok.example.test."},
}
SERVFAIL = ["v4ok.example.test AAAA", "v6ok.example.test A", "neither.example.test"]


@pytest.fixture
def dns(dns_server: Callable[..., DnsServer]) -> DnsServer:
    return dns_server(RECORDS, servfail=SERVFAIL)


def _probe_module(dns: DnsServer, port: int, **changes: Any) -> ModuleConfig:
    return module(port=port, dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0), **changes)


async def test_aaaa_servfail_with_a_good_a_connects_over_ipv4(
    dns: DnsServer, smtp_server: AiosmtpdServer
) -> None:
    result = await Prober().probe(*compiled("v4ok.example.test", "m", _probe_module(dns, smtp_server.port)))
    assert result.success, describe(result)
    assert result.address is not None and (result.address.ip, result.address.family) == ("127.0.0.1", 4)
    assert {(q.name, q.rdtype) for q in dns.queries} >= {
        ("v4ok.example.test.", "A"),
        ("v4ok.example.test.", "AAAA"),
    }


async def test_mx_host_with_aaaa_servfail_connects_over_ipv4(
    dns: DnsServer, smtp_server: AiosmtpdServer
) -> None:
    result = await Prober().probe(
        *compiled("example.test", "m", _probe_module(dns, smtp_server.port, mx=True))
    )
    assert result.success, describe(result)
    assert result.mx is not None and result.mx.host == "v4ok.example.test"
    assert result.address is not None and result.address.family == 4


@pytest.mark.usefixtures("needs_ipv6")
async def test_a_servfail_with_a_good_aaaa_connects_over_ipv6(
    dns: DnsServer, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    server = smtp_server_factory(host="::1")
    result = await Prober().probe(*compiled("v6ok.example.test", "m", _probe_module(dns, server.port)))
    assert result.success, describe(result)
    assert result.address is not None and (result.address.ip, result.address.family) == ("::1", 6)


async def test_both_lookups_failing_is_a_dns_error_naming_both(
    dns: DnsServer, smtp_server: AiosmtpdServer
) -> None:
    result = await Prober().probe(
        *compiled("neither.example.test", "m", _probe_module(dns, smtp_server.port))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, FailureReason.DNS_ERROR)
    assert "neither.example.test AAAA" in result.failure.message
    assert "neither.example.test A:" in result.failure.message
    assert "connect" not in names(result)
    assert smtp_server.connections == []


async def test_ip4_looks_up_only_a(dns: DnsServer, smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled("v4ok.example.test", "m", _probe_module(dns, smtp_server.port, ip_protocol=IPProtocol.IP4))
    )
    assert result.success, describe(result)
    assert {q.rdtype for q in dns.queries} == {"A"}
