"""Connect failures, deadlines, and the module's expectations."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator

import pytest

from smtp_exporter.config.schema import ExpectConfig, StartTLS
from smtp_exporter.model import FailureReason, Phase
from smtp_exporter.probe import Prober
from smtp_exporter.targets import TargetError
from tests.helpers import require_binary, skip_or_fail
from tests.probe.common import Stopwatch, compiled, describe, module, names, trusting
from tests.servers import scripted
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.scripted import ScriptedServer
from tests.servers.tls import TestCA

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused, and no one else can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connect_refused(closed_port: int) -> None:
    result = await Prober().probe(*compiled(f"127.0.0.1:{closed_port}", "m", module()))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.CONNECT_REFUSED)
    assert str(closed_port) in result.failure.message
    assert result.phases == ()
    assert result.address is None
    assert result.duration_seconds < 1.0


@pytest.mark.parametrize("target", ["127.0.0.1:25", "[::1]:25"])
def test_network_unreachable(target: str) -> None:
    """In a network namespace of its own, loopback is down and no route exists: the probe's
    connect fails with ENETUNREACH/EADDRNOTAVAIL without any packet leaving the namespace."""
    unshare = require_binary("unshare")
    command = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    probe = [sys.executable, "-m", "smtp_exporter", "probe", "--output", "json", "--timeout", "2s", target]
    done = subprocess.run([*command, *probe], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode not in (0, 1) and "Operation not permitted" in done.stderr:
        skip_or_fail(f"cannot make a network namespace here: {done.stderr.strip()}")
    assert done.returncode == 1, done.stderr
    failure = json.loads(done.stdout)["failure"]
    assert (failure["phase"], failure["reason"]) == ("connect", "network_unreachable"), failure


async def test_connect_refused_after_a_server_went_away() -> None:
    server = AiosmtpdServer().start()
    port = server.port
    server.stop()
    result = await Prober().probe(*compiled(f"127.0.0.1:{port}", "m", module()))
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.CONNECT_REFUSED)


async def test_probe_timeout_argument_smaller_than_module_wins(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(scripted.silence())
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(server.target, "m", module(port=server.port, timeout=10.0)), timeout=0.5
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.BANNER, FailureReason.TIMEOUT)
    assert "0.5s" in result.failure.message
    assert 0.5 <= result.duration_seconds < 1.0
    assert watch.seconds < 1.5
    assert await server.wait_closed(2.0)
    assert server.connections[0].client_closed


async def test_module_timeout_smaller_than_argument_wins(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(scripted.silence())
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(server.target, "m", module(port=server.port, timeout=0.5)), timeout=30.0
        )
    assert result.failure is not None and result.failure.reason is FailureReason.TIMEOUT
    assert watch.seconds < 1.5


async def test_bad_target_raises_target_error() -> None:
    with pytest.raises(TargetError):
        await Prober().probe(*compiled("mail.example.test:99999", "m", module()))


async def test_banner_expectation_mismatch(smtp_server: AiosmtpdServer) -> None:
    expect = ExpectConfig(banner=r"^mail\.test ESMTP Postfix")
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module(port=smtp_server.port, expect=expect))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.BANNER, FailureReason.EXPECTATION_FAILED)
    assert "aiosmtpd" in result.failure.message  # what the banner really said
    assert names(result) == ["connect", "banner"]
    assert result.phases[-1].reply_code == 220
    assert bytes(smtp_server.connections[0].received) == b"QUIT\r\n"
    assert await smtp_server.wait_closed()


async def test_banner_expectation_match(smtp_server: AiosmtpdServer) -> None:
    expect = ExpectConfig(banner=r"^mail\.test ESMTP aiosmtpd")
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module(port=smtp_server.port, expect=expect))
    )
    assert result.success, describe(result)


async def test_extension_expectation_missing(smtp_server: AiosmtpdServer) -> None:
    expect = ExpectConfig(extensions=("8BITMIME", "DSN", "CHUNKING"))
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module("smtp_full", port=smtp_server.port, expect=expect))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.EHLO, FailureReason.EXPECTATION_FAILED)
    assert "DSN" in result.failure.message and "CHUNKING" in result.failure.message
    assert "8BITMIME" not in result.failure.message
    assert names(result) == ["connect", "banner", "ehlo"]
    assert bytes(smtp_server.connections[0].received) == b"EHLO probe.test\r\nQUIT\r\n"
    assert smtp_server.messages == []


async def test_extension_expectation_met(smtp_server_factory: Callable[..., AiosmtpdServer]) -> None:
    server = smtp_server_factory(extra_extensions=("DSN",))
    expect = ExpectConfig(extensions=("DSN", "SIZE"))
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, expect=expect)))
    assert result.success, describe(result)


async def test_extension_expectation_after_starttls(
    smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA
) -> None:
    """Extensions are checked against the EHLO inside TLS when STARTTLS was used."""
    server = smtp_server_factory(starttls=tls_ca.server_cert)
    expect = ExpectConfig(extensions=("DSN",))
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, expect=expect, tls_config=trusting(tls_ca)))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.EHLO_TLS, FailureReason.EXPECTATION_FAILED)


async def test_expect_starttls_when_starttls_used(starttls_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    expect = ExpectConfig(extensions=("STARTTLS",))
    result = await Prober().probe(
        *compiled(
            starttls_server.target,
            "m",
            module(
                port=starttls_server.port, expect=expect, starttls=StartTLS.AUTO, tls_config=trusting(tls_ca)
            ),
        ),
    )
    assert result.success, describe(result)


async def test_expect_starttls_without_using_it(starttls_server: AiosmtpdServer) -> None:
    expect = ExpectConfig(extensions=("STARTTLS",))
    result = await Prober().probe(
        *compiled(
            starttls_server.target,
            "m",
            module(port=starttls_server.port, expect=expect, starttls=StartTLS.NEVER),
        )
    )
    assert result.success, describe(result)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops new SYNs, so a connect hangs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            yield listener.getsockname()[1]
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_timeout(full_backlog: int) -> None:
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(*compiled(f"127.0.0.1:{full_backlog}", "m", module(timeout=0.5)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.TIMEOUT)
    assert result.phases == ()
    assert result.duration_seconds < 1.0 and watch.seconds < 1.5


async def test_localhost_through_the_system_resolver(smtp_server: AiosmtpdServer) -> None:
    """No nameservers configured: /etc/hosts answers for localhost, as for every other program."""
    result = await Prober().probe(*compiled(f"localhost:{smtp_server.port}", "m", module()))
    assert result.success, describe(result)
    assert names(result)[:2] == ["resolve", "connect"]
    assert result.address is not None and result.address.ip in ("127.0.0.1", "::1")
