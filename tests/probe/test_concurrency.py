"""Many probes on one event loop: all succeed, and no socket outlives its probe."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Awaitable, Callable

from smtp_exporter.config.schema import StartTLS
from smtp_exporter.model import FailureReason, ProbeResult
from smtp_exporter.probe import Prober
from tests.helpers import require_module
from tests.probe.common import compiled, describe, module, trusting
from tests.servers import scripted
from tests.servers.aiosmtpd_server import AiosmtpdServer, Fault
from tests.servers.scripted import ScriptedServer
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def quiet_fds() -> int:
    """This process' fd count once sockets closed a moment ago are really gone."""
    await asyncio.sleep(0.1)
    gc.collect()
    return open_fds()


async def settled_fds(expected: int, timeout: float = 3.0) -> int:
    """This process' fd count once it is back to `expected` (or whatever it is after `timeout`):
    servers in threads of this process close their side a moment after the client."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        gc.collect()
        count = open_fds()
        if count <= expected or loop.time() >= deadline:
            return count
        await asyncio.sleep(0.02)


async def test_200_concurrent_probes_against_smtp_sink(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink_factory(backlog=1024)
    prober = Prober()
    full = module("smtp_full", port=sink.port, rcpt_to=("postmaster@sink.test",), timeout=20.0)
    warm_up = await prober.probe(*compiled(sink.target, "full", full))  # contexts, resolver: created once
    assert warm_up.success, describe(warm_up)
    before = await quiet_fds()

    results = await asyncio.gather(*(prober.probe(*compiled(sink.target, "full", full)) for _ in range(200)))

    failed = [describe(r) for r in results if not r.success]
    assert not failed, failed[0]
    assert all(len(r.phases) == 8 for r in results)
    # Under load a reply can arrive before the probe's coroutine runs again: no phase may then
    # come out negative (the greeting is timed from when the connection was up).
    negative = [(p.phase, p.duration_seconds) for r in results for p in r.phases if p.duration_seconds < 0]
    assert not negative, negative[:5]
    assert await settled_fds(before) == before


async def test_failing_probes_leak_no_socket(
    smtp_server_factory: Callable[..., AiosmtpdServer],
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
    tls_ca: TestCA,
) -> None:
    """Every failure path closes its socket: refused, timeout, TLS, protocol errors, 4xx."""
    expired = smtp_server_factory(starttls=tls_ca.expired())
    faulty = smtp_server_factory(starttls=tls_ca.server_cert, faults=[Fault("rcpt", 452, "4.5.3")])
    plaintext_tls = await scripted_server(scripted.starttls_no_tls())
    silent = await scripted_server(scripted.silence())
    garbage = await scripted_server(scripted.garbage_greeting())
    endless = await scripted_server(scripted.endless_multiline())
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        closed_port = refusing.getsockname()[1]
        prober = Prober()
        tls = trusting(tls_ca)
        cases = [
            (expired.target, module(port=expired.port, tls_config=tls), FailureReason.TLS_CERT_INVALID),
            (
                faulty.target,
                module("smtp_envelope", port=faulty.port, tls_config=tls, starttls=StartTLS.REQUIRED),
                FailureReason.REPLY_TEMPORARY,
            ),
            (
                plaintext_tls.target,
                module(tls_config=tls, port=plaintext_tls.port),
                FailureReason.TLS_HANDSHAKE_FAILED,
            ),
            (silent.target, module(port=silent.port, timeout=0.5), FailureReason.TIMEOUT),
            (garbage.target, module(port=garbage.port), FailureReason.UNEXPECTED_REPLY),
            (endless.target, module(port=endless.port), FailureReason.PROTOCOL_ERROR),
            (f"127.0.0.1:{closed_port}", module(), FailureReason.CONNECT_REFUSED),
        ]
        # One round first, so what is created once per process does not count as a leak.
        await asyncio.gather(*(prober.probe(*compiled(target, "m", m)) for target, m, _ in cases))
        for server in (plaintext_tls, silent, garbage, endless):
            assert await server.wait_closed(2.0)
        assert expired.wait_closed_blocking(2.0) and faulty.wait_closed_blocking(2.0)
        before = await quiet_fds()

        for _ in range(3):
            results = await asyncio.gather(
                *(prober.probe(*compiled(target, "m", m)) for target, m, _ in cases)
            )
            for result, (_, _, reason) in zip(results, cases, strict=True):
                assert result.failure is not None and result.failure.reason is reason, describe(result)

        for server in (plaintext_tls, silent, garbage, endless):
            assert await server.wait_closed(2.0)
        assert expired.wait_closed_blocking(2.0) and faulty.wait_closed_blocking(2.0)
        assert await settled_fds(before) == before


def test_no_phase_is_negative_under_uvloop(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    """The exporter runs on uvloop, where the 220 greeting can be delivered before the probe's
    coroutine resumes after connect: the banner phase must still be timed from the connect."""
    uvloop = require_module("uvloop")  # installed by the test command ([uvloop] extra)
    sink = smtp_sink_factory()
    settings = module(port=sink.port)

    async def probes() -> list[ProbeResult]:
        prober = Prober()
        return list(
            await asyncio.gather(*(prober.probe(*compiled(sink.target, "m", settings)) for _ in range(300)))
        )

    results = uvloop.run(probes())
    assert all(r.success for r in results), describe(next(r for r in results if not r.success))
    negative = [(p.phase, p.duration_seconds) for r in results for p in r.phases if p.duration_seconds < 0]
    assert not negative, negative[:5]
