"""Failover inside one probe (issue #13): MX hosts in order, each connect bounded, at most
`max_attempts`, a 4xx greeting moving on, every attempt reported. Real sockets on loopback and
the loopback DNS server; a silent host is a listener whose accept queue is full."""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from smtp_exporter.config.loader import ConfigError, load_config_text
from smtp_exporter.config.schema import DNSConfig, IPProtocol, ModuleConfig, MXFailover
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, Phase, ProbeResult, Transaction
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.probe.common import Stopwatch, compiled, describe, module
from tests.probe.test_dns import needs_ipv6  # noqa: F401  (a fixture)
from tests.servers import scripted
from tests.servers.dns_server import DnsServer
from tests.servers.scripted import ScriptedServer

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]

# mxN.example.test is 127.0.0.N+1: 127.0.0.1 is the working server unless a test says otherwise.
RECORDS = {
    "silent-first.test": {"MX": ["10 mx2.example.test.", "20 mx1.example.test."]},
    "greeting.test": {"MX": ["10 mx2.example.test.", "20 mx1.example.test."]},
    "rcpt.test": {"MX": ["10 mx1.example.test.", "20 mx2.example.test."]},
    "many.test": {
        "MX": ["10 mx2.example.test.", "20 mx3.example.test.", "30 mx4.example.test.", "40 mx1.example.test."]
    },
    "allbad.test": {"MX": ["10 mx2.example.test.", "20 mx3.example.test."]},
    "equal.test": {
        "MX": ["10 mx4.example.test.", "20 mx1.example.test.", "10 mx3.example.test.", "10 mx2.example.test."]
    },
    "mx1.example.test": {"A": "127.0.0.1"},
    "mx2.example.test": {"A": "127.0.0.2"},
    "mx3.example.test": {"A": "127.0.0.3"},
    "mx4.example.test": {"A": "127.0.0.4"},
}


@contextmanager
def silent_host(host: str, port: int) -> Iterator[None]:
    """A listener on host:port whose accept queue is full: the kernel drops new SYNs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((host, port))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex((host, port))
            yield
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
def dns(dns_server: Callable[..., DnsServer]) -> DnsServer:
    return dns_server(RECORDS)


def _mx_module(dns: DnsServer, port: int, **changes: Any) -> ModuleConfig:
    options: dict[str, Any] = {"mx": True, "ip_protocol": IPProtocol.IP4, "timeout": 5.0}
    options.update(changes)
    return module(port=port, dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0), **options)


def _attempts(result: ProbeResult) -> list[tuple[str | None, str, str, str | None, str | None]]:
    return [
        (
            a.mx_host,
            a.address,
            a.outcome.value,
            None if a.phase is None else a.phase.value,
            None if a.reason is None else a.reason.value,
        )
        for a in result.attempts
    ]


async def test_silent_primary_mx_fails_over_to_the_secondary(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(scripted.minimal_conversation())
    settings = _mx_module(dns, server.port, connect_timeout=0.5)
    with silent_host("127.0.0.2", server.port):
        async with Stopwatch.timing() as watch:
            result = await Prober().probe(*compiled("silent-first.test", "m", settings))
    assert result.success, describe(result)
    assert watch.seconds < 3.0  # the connect_timeout, not the 5s deadline
    assert _attempts(result) == [
        ("mx2.example.test", "127.0.0.2", "failed", "connect", "timeout"),
        ("mx1.example.test", "127.0.0.1", "connected", None, None),
    ]
    assert 0.4 < result.attempts[0].duration_seconds < 2.0
    assert result.attempts[0].family == 4
    assert result.fallback
    assert result.mx is not None and result.mx.host == "mx1.example.test"
    body = render_probe_result(result, openmetrics=False).decode()
    assert "smtp_probe_attempts 2\n" in body
    assert "smtp_probe_fallback 1\n" in body
    assert 'smtp_probe_attempt_failures_total{reason="timeout"} 1\n' in body
    document = probe_json(result)
    assert document["attempts"][0] == {
        "mx_host": "mx2.example.test",
        "address": "127.0.0.2",
        "family": 4,
        "outcome": "failed",
        "phase": "connect",
        "reason": "timeout",
        "duration_seconds": result.attempts[0].duration_seconds,
    }
    json.dumps(document)
    text = format_text(result)
    assert "Attempts:" in text and "127.0.0.2 (MX mx2.example.test) IPv4 failed in connect: timeout" in text
    transcript = [line.text for line in result.transcript]
    assert any("no connection within 0.5s (connect_timeout)" in line for line in transcript)


async def test_421_greeting_on_the_first_mx_moves_on_to_the_second(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    def script(n: int) -> scripted.Script:
        if n == 0:
            return [scripted.Send(b"421 4.3.2 mx2 busy, try later\r\n"), scripted.ExpectLine()]
        return scripted.minimal_conversation()

    server = await scripted_server(script, hosts=("127.0.0.2", "127.0.0.1"))
    result = await Prober().probe(*compiled("greeting.test", "m", _mx_module(dns, server.port)))
    assert result.success, describe(result)
    assert _attempts(result) == [
        ("mx2.example.test", "127.0.0.2", "failed", "banner", "reply_temporary"),
        ("mx1.example.test", "127.0.0.1", "connected", None, None),
    ]
    assert result.fallback
    assert result.address is not None and result.address.ip == "127.0.0.1"
    assert len(server.connections) == 2
    assert server.connections[0].lines == [b"QUIT\r\n"]  # a polite goodbye to the busy one
    assert [p.phase for p in result.phases][:3] == [Phase.RESOLVE, Phase.CONNECT, Phase.BANNER]
    assert result.phase(Phase.BANNER) is not None and result.phase(Phase.BANNER).reply_code == 220  # type: ignore[union-attr]


async def test_greeting_not_in_mx_failover_on_fails_the_probe(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(
        lambda n: [scripted.Send(b"421 4.3.2 busy\r\n"), scripted.ExpectLine()],
        hosts=("127.0.0.2", "127.0.0.1"),
    )
    settings = _mx_module(dns, server.port, mx_failover_on=(MXFailover.CONNECT, MXFailover.EHLO))
    result = await Prober().probe(*compiled("greeting.test", "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.BANNER, FailureReason.REPLY_TEMPORARY)
    assert len(result.attempts) == 1 and len(server.connections) == 1


async def test_550_at_rcpt_on_the_first_mx_is_a_failure_without_failover(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(
        lambda n: scripted.minimal_conversation(RCPT=b"550 5.1.1 no such user\r\n"),
        hosts=("127.0.0.1", "127.0.0.2"),
    )
    settings = _mx_module(dns, server.port, transaction=Transaction.ENVELOPE)
    result = await Prober().probe(*compiled("rcpt.test", "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RCPT, FailureReason.REPLY_PERMANENT)
    assert _attempts(result) == [("mx1.example.test", "127.0.0.1", "connected", None, None)]
    assert not result.fallback
    assert len(server.connections) == 1


async def test_max_attempts_is_honoured(dns: DnsServer, scripted_server: ScriptedFactory) -> None:
    # mx2..mx4 (127.0.0.2-4) refuse: nothing listens there on the port; mx1 would answer.
    server = await scripted_server(scripted.minimal_conversation())
    result = await Prober().probe(*compiled("many.test", "m", _mx_module(dns, server.port, max_attempts=2)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.CONNECT_REFUSED)
    assert _attempts(result) == [
        ("mx2.example.test", "127.0.0.2", "failed", "connect", "connect_refused"),
        ("mx3.example.test", "127.0.0.3", "failed", "connect", "connect_refused"),
    ]
    assert server.connections == []
    assert "127.0.0.3" in result.failure.message
    more = await Prober().probe(*compiled("many.test", "m", _mx_module(dns, server.port, max_attempts=4)))
    assert more.success and len(more.attempts) == 4, describe(more)


async def test_all_bad_fails_with_the_attempt_that_ended_last(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(scripted.minimal_conversation())  # only to reserve a port
    settings = _mx_module(dns, server.port, connect_timeout=0.3)
    with silent_host("127.0.0.2", server.port):
        result = await Prober().probe(*compiled("allbad.test", "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.CONNECT_REFUSED)
    assert "127.0.0.3" in result.failure.message
    assert _attempts(result) == [
        ("mx2.example.test", "127.0.0.2", "failed", "connect", "timeout"),
        ("mx3.example.test", "127.0.0.3", "failed", "connect", "connect_refused"),
    ]
    assert not result.fallback
    state = SeriesState(
        (("target", "allbad.test"), ("module", "m")), buckets=Buckets(()), phase_histograms=False
    )
    rendered = series_text(state, result, result)
    assert (
        'smtp_probe_attempt_failures_total{target="allbad.test",module="m",reason="timeout"} 2\n' in rendered
    )
    assert (
        'smtp_probe_attempt_failures_total{target="allbad.test",module="m",reason="connect_refused"} 2\n'
        in rendered
    )
    assert 'smtp_probe_attempts{target="allbad.test",module="m"} 2\n' in rendered
    assert 'smtp_probe_fallback{target="allbad.test",module="m"} 0\n' in rendered


async def test_connect_failover_off_stays_on_the_first_mx(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    server = await scripted_server(scripted.minimal_conversation())
    settings = _mx_module(dns, server.port, mx_failover_on=(MXFailover.GREETING,))
    result = await Prober().probe(*compiled("silent-first.test", "m", settings))  # mx2 refuses
    assert result.failure is not None, describe(result)
    assert result.failure.reason is FailureReason.CONNECT_REFUSED
    assert len(result.attempts) == 1 and server.connections == []


async def test_equal_preferences_are_tried_in_dns_order(
    dns: DnsServer, scripted_server: ScriptedFactory
) -> None:
    """The test server shuffles records in each answer, as real servers rotate them: the order
    tried follows each answer (not the names), the lower preference always first."""
    server = await scripted_server(scripted.minimal_conversation())
    orders = set()
    for _ in range(12):
        result = await Prober().probe(*compiled("equal.test", "m", _mx_module(dns, server.port)))
        assert result.success, describe(result)
        hosts = [a.mx_host for a in result.attempts]
        assert sorted(hosts[:3]) == ["mx2.example.test", "mx3.example.test", "mx4.example.test"]  # type: ignore[type-var]
        assert hosts[3] == "mx1.example.test"
        orders.add(tuple(hosts))
    assert len(orders) > 1


async def test_a_target_without_mx_reports_its_attempt_without_mx_host(
    scripted_server: ScriptedFactory,
) -> None:
    server = await scripted_server(scripted.minimal_conversation())
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port)))
    assert result.success, describe(result)
    assert _attempts(result) == [(None, "127.0.0.1", "connected", None, None)]
    assert "smtp_probe_fallback 0\n" in render_probe_result(result, openmetrics=False).decode()


def test_config_keys() -> None:
    config = load_config_text(
        "modules:\n  m:\n    mx: true\n    timeout: 6s\n    connect_timeout: 2s\n    max_attempts: 3\n"
        "    mx_failover_on: [ehlo, connect]\n",
        source="t.yml",
    )
    m = config.modules["m"]
    assert (m.connect_timeout, m.max_attempts, m.mx_failover_on) == (
        2.0,
        3,
        (MXFailover.CONNECT, MXFailover.EHLO),
    )
    assert m.connect_timeout_for(1.0) == 1.0
    assert ModuleConfig(timeout=6.0).connect_timeout_for(6.0) == 2.0
    assert ModuleConfig(timeout=60.0).connect_timeout_for(60.0) == 5.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "    mx_failover_on: [greting]\n",
            't.yml:3: modules.m.mx_failover_on[0]: invalid value "greting": must be one of connect, greeting, ehlo',
        ),
        ("    max_attempts: 0\n", "t.yml:3: modules.m.max_attempts: must be between 1 and 100, not 0"),
        (
            "    timeout: 2s\n    connect_timeout: 3s\n",
            "t.yml:4: modules.m.connect_timeout: must not be longer than the module's timeout (2s)",
        ),
    ],
)
def test_config_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(f"modules:\n  m:\n{body}", source="t.yml")
    assert str(caught.value) == message


# -- source_ip_address ------------------------------------------------------------------------------


async def test_source_address_is_bound_before_connecting(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(scripted.minimal_conversation())
    settings = module(port=server.port, source_ip_address="127.0.0.2")
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.success, describe(result)
    assert [connection.peer[0] for connection in server.connections] == ["127.0.0.2"]


async def test_an_unbindable_source_address_is_a_local_error(scripted_server: ScriptedFactory) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind() fails with EADDRNOTAVAIL, and no
    # packet is ever sent from or to it.
    server = await scripted_server(scripted.minimal_conversation())
    settings = module(port=server.port, source_ip_address="192.0.2.1")
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.LOCAL_ERROR)
    assert "192.0.2.1" in result.failure.message
    assert "Cannot assign requested address" in result.failure.message
    assert _attempts(result) == [(None, "127.0.0.1", "failed", "connect", "local_error")]
    assert server.connections == []


async def test_a_source_of_one_family_skips_the_others_addresses(
    dns_server: Callable[..., DnsServer], scripted_server: ScriptedFactory
) -> None:
    dns = dns_server({"dual.test": {"A": "127.0.0.1", "AAAA": "::1"}})
    server = await scripted_server(scripted.minimal_conversation())
    settings = module(
        port=server.port,
        source_ip_address="127.0.0.3",
        dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0),
    )
    result = await Prober().probe(*compiled("dual.test", "m", settings))
    assert result.success, describe(result)
    assert _attempts(result) == [(None, "127.0.0.1", "connected", None, None)]
    assert {q.rdtype for q in dns.queries} == {"A"}
    literal = await Prober().probe(*compiled(f"[::1]:{server.port}", "m", settings))
    assert literal.failure is not None, describe(literal)
    assert (literal.failure.phase, literal.failure.reason) == (
        Phase.CONNECT,
        FailureReason.NETWORK_UNREACHABLE,
    )
    assert literal.attempts == ()


def test_source_address_config() -> None:
    config = load_config_text("modules:\n  m:\n    source_ip_address: '2001:db8::0010'\n", source="t.yml")
    assert config.modules["m"].source_ip_address == "2001:db8::10"
    assert config.modules["m"].source_family == 6
    for body, message in (
        (
            "    source_ip_address: mail.example\n",
            'invalid value "mail.example": must be an IPv4 or IPv6 address',
        ),
        (
            "    ip_protocol: ip6\n    source_ip_address: 192.0.2.1\n",
            "an IPv4 source contradicts ip_protocol: ip6",
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config_text(f"modules:\n  m:\n{body}", source="t.yml")
        assert str(caught.value).endswith(f"modules.m.source_ip_address: {message}")


# -- Happy Eyeballs -----------------------------------------------------------------------------------


@contextmanager
def silent_ipv6(port: int) -> Iterator[None]:
    """A listener on [::1]:port whose accept queue is full: new SYNs are dropped."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", port))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(("::1", port))
            yield
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.usefixtures("needs_ipv6")
async def test_silent_ipv6_with_working_ipv4_succeeds_via_ipv4(
    dns_server: Callable[..., DnsServer], scripted_server: ScriptedFactory
) -> None:
    dns = dns_server({"dual.test": {"A": "127.0.0.1", "AAAA": "::1"}})
    server = await scripted_server(scripted.minimal_conversation())
    settings = module(
        port=server.port,
        ip_protocol=IPProtocol.AUTO,
        happy_eyeballs_delay=0.25,
        dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0),
    )
    with silent_ipv6(server.port):
        async with Stopwatch.timing() as watch:
            result = await Prober().probe(*compiled("dual.test", "m", settings))
    assert result.success, describe(result)
    assert watch.seconds < 1.5  # about the delay plus a round trip, far below connect_timeout
    assert _attempts(result) == [
        (None, "::1", "cancelled", None, None),
        (None, "127.0.0.1", "connected", None, None),
    ]
    assert result.address is not None and result.address.family == 4
    assert not result.fallback  # IPv4 only won the race against a still pending IPv6
    body = render_probe_result(result, openmetrics=False).decode()
    assert "smtp_probe_attempts 2\n" in body and "smtp_probe_fallback 0\n" in body
    assert "smtp_probe_ip_protocol 4\n" in body


async def test_prefer_ip4_tries_ipv4_first(
    dns_server: Callable[..., DnsServer], scripted_server: ScriptedFactory
) -> None:
    dns = dns_server({"dual.test": {"A": "127.0.0.1", "AAAA": "::1"}})
    server = await scripted_server(scripted.minimal_conversation())
    settings = module(
        port=server.port,
        ip_protocol=IPProtocol.PREFER_IP4,
        dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0),
    )
    result = await Prober().probe(*compiled("dual.test", "m", settings))
    assert result.success, describe(result)
    assert _attempts(result) == [(None, "127.0.0.1", "connected", None, None)]
