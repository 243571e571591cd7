"""The posture checks' DNS helper against a real DNS server on loopback (tests/servers/dns_server.py):
the DO bit is sent, and answers are classified insecure (no AD), bogus (SERVFAIL) or failed (no
answer, REFUSED). `secure` needs a validating resolver: tests/servers/dnssec.py's tests."""

from __future__ import annotations

from collections.abc import Callable

import dns.flags
import dns.message
import pytest

from smtp_exporter.config.schema import DNSConfig
from smtp_exporter.posture.dns import PostureDNS, Security
from tests.servers.dns_server import DnsServer

RECORDS = {
    "host.posture.test": {"A": ["127.0.0.1", "127.0.0.2"], "AAAA": "::1"},
    "alias.posture.test": {"CNAME": "host.posture.test."},
    "posture.test": {"MX": ["10 host.posture.test.", "20 alias.posture.test."]},
}


@pytest.fixture
def server(dns_server: Callable[..., DnsServer]) -> DnsServer:
    return dns_server(RECORDS, servfail=["broken.posture.test"], drop=["silent.posture.test"])


def _client(server: DnsServer, timeout: float = 1.0) -> PostureDNS:
    return PostureDNS(DNSConfig(nameservers=(server.nameserver,), timeout=timeout))


async def test_an_unsigned_answer_is_insecure_and_asked_with_do(server: DnsServer) -> None:
    found = await _client(server).lookup("Host.Posture.Test.", "A")
    assert (found.security, found.rcode, found.answered) == (Security.INSECURE, "NOERROR", True)
    assert sorted(str(r.address) for r in found.records) == ["127.0.0.1", "127.0.0.2"]  # type: ignore[attr-defined]
    assert found.aliases == ()
    assert found.name == "host.posture.test"
    assert [(q.name, q.rdtype) for q in server.queries] == [("host.posture.test.", "A")]


async def test_the_query_carries_the_do_bit(server: DnsServer) -> None:
    seen: list[dns.message.Message] = []
    original = server.answer

    def recording(query: dns.message.Message) -> dns.message.Message:
        seen.append(query)
        return original(query)

    server.answer = recording  # type: ignore[method-assign]
    await _client(server).lookup("host.posture.test", "AAAA")
    assert seen and seen[0].ednsflags & dns.flags.DO
    assert seen[0].edns == 0


async def test_a_cname_chain_is_followed_and_reported(server: DnsServer) -> None:
    found = await _client(server).lookup("alias.posture.test", "A")
    assert found.aliases == ("host.posture.test",)
    assert len(found.records) == 2


async def test_nxdomain_and_nodata_are_answers(server: DnsServer) -> None:
    client = _client(server)
    missing = await client.lookup("nothere.posture.test", "A")
    assert (missing.security, missing.rcode, missing.nxdomain, missing.records) == (
        Security.INSECURE,
        "NXDOMAIN",
        True,
        (),
    )
    nodata = await client.lookup("posture.test", "A")
    assert (nodata.rcode, nodata.nxdomain, nodata.records) == ("NOERROR", False, ())


async def test_servfail_is_bogus(server: DnsServer) -> None:
    found = await _client(server).lookup("broken.posture.test", "MX")
    assert (found.security, found.rcode, found.answered) == (Security.BOGUS, "SERVFAIL", False)
    assert found.describe() == "broken.posture.test MX: bogus (SERVFAIL)"


async def test_refused_and_silence_are_failed(server: DnsServer) -> None:
    client = _client(server, timeout=0.5)
    refused = await client.lookup("example.org", "MX")  # outside the server's zones
    assert (refused.security, refused.rcode, refused.error) == (Security.FAILED, None, "REFUSED")
    silent = await client.lookup("silent.posture.test", "A")
    assert (silent.security, silent.rcode) == (Security.FAILED, None)
    assert silent.error == "no answer within 0.5s"


async def test_the_next_nameserver_answers_when_the_first_is_silent(
    server: DnsServer, dns_server: Callable[..., DnsServer]
) -> None:
    mute = dns_server({}, drop=["host.posture.test"])
    client = PostureDNS(DNSConfig(nameservers=(mute.nameserver, server.nameserver), timeout=2.0))
    found = await client.lookup("host.posture.test", "A")
    assert found.security is Security.INSECURE
    assert found.records


def test_the_registry_matches_the_config_contract() -> None:
    from smtp_exporter.config.posture import CHECKS as CONTRACT
    from smtp_exporter.posture import CHECKS

    assert [check.name for check in CHECKS] == list(CONTRACT)
