"""The exporter's own side fails: no file descriptor left (this process's RLIMIT_NOFILE lowered
and every free descriptor below it taken, for the duration of one probe). The probe fails with `local_error` in the
phase that needed the descriptor, with a message naming the cause, and raises nothing."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from smtp_exporter.config.schema import DNSConfig
from smtp_exporter.model import FailureReason, Phase
from smtp_exporter.probe import Prober
from smtp_exporter.probe.engine import Conversation
from smtp_exporter.probe.resolve import DNSClient
from smtp_exporter.probe.tls import CertificateReader
from smtp_exporter.protocol.envelope import compile_sender
from smtp_exporter.targets import Target
from tests.probe.common import compiled, describe, module
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer

RECORDS = {"host.example.test": {"A": "127.0.0.1"}}


@contextmanager
def no_descriptor_left() -> Iterator[None]:
    """RLIMIT_NOFILE just above the descriptors in use, and every free number below it taken by
    a placeholder: the next descriptor anyone asks for is refused (EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = [int(name) for name in os.listdir("/proc/self/fd")]
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(in_use) + 1, hard))
    placeholders = []
    try:
        while True:
            placeholders.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        yield
    finally:
        for fd in placeholders:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_connect_without_a_descriptor(smtp_server: AiosmtpdServer) -> None:
    prober = Prober()
    mod = module(port=smtp_server.port)
    await prober.probe(*compiled(smtp_server.target, "m", mod))  # what a probe imports lazily, imported
    # The server closes its side of that connection in its own thread: wait, or the descriptor
    # it frees would let the next probe connect after all.
    assert await smtp_server.wait_closed()
    with no_descriptor_left():
        result = await prober.probe(*compiled(smtp_server.target, "m", mod))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.CONNECT, FailureReason.LOCAL_ERROR)
    assert result.failure.message.startswith("the exporter could not run this probe: Too many open files")
    assert smtp_server.host in result.failure.message
    # And once descriptors are back, the next probe succeeds.
    assert (await prober.probe(*compiled(smtp_server.target, "m", mod))).success


async def test_dns_without_a_descriptor(
    dns_server: Callable[..., DnsServer], smtp_server: AiosmtpdServer
) -> None:
    dns = dns_server(RECORDS)
    prober = Prober()
    mod = module(port=smtp_server.port, dns=DNSConfig(nameservers=(dns.nameserver,), timeout=1.0))
    await prober.probe(*compiled("host.example.test", "m", mod))
    assert await smtp_server.wait_closed()
    with no_descriptor_left():
        result = await prober.probe(*compiled("host.example.test", "m", mod))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RESOLVE, FailureReason.LOCAL_ERROR)
    assert "Too many open files" in result.failure.message
    assert (await prober.probe(*compiled("host.example.test", "m", mod))).success


async def test_an_unexpected_error_is_a_failed_result(smtp_server: AiosmtpdServer) -> None:
    """An implicit-TLS module handed no TLS context (a bug on the exporter's side, which no rule
    of the conversation expects): the probe still ends as a result, failed with local_error."""
    mod = module("smtps_handshake", port=smtp_server.port)
    conversation = Conversation(
        target=Target("127.0.0.1", smtp_server.port, 4),
        target_text=smtp_server.target,
        module_name="m",
        module=mod,
        timeout=mod.timeout,
        dns=DNSClient(mod.dns),
        tls_context=None,
        certificates=CertificateReader(),
        ehlo_name="probe.test",
        sender=compile_sender(mod),
    )
    result = await conversation.run()
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.LOCAL_ERROR)
    assert result.failure.message.startswith("the exporter could not run this probe: ")
    assert [p.phase for p in result.phases] == [Phase.CONNECT]
    assert await smtp_server.wait_closed()
