"""TLS 1.2 renegotiation requested by the server, mid-conversation.

Python's ssl module cannot make a server renegotiate (no SSL_renegotiate binding), and
pyOpenSSL does not support the cryptography version pinned here, so the peer is OpenSSL's
own `openssl s_server`, whose `r` command sends a HelloRequest on the live session. The
probe must follow it (OpenSSL clients accept secure renegotiation, RFC 5746) and finish
its conversation, or fail cleanly: never hang past its deadline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtp_exporter.config.schema import ModuleConfig, TLSConfig
from smtp_exporter.probe import Prober
from tests.helpers import require_binary
from tests.probe.common import compiled
from tests.servers.tls import TestCA

TIMEOUT = 5.0


class SServer:
    """`openssl s_server` speaking SMTP lines from its stdin, TLS 1.2 only, implicit TLS."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.seen: list[bytes] = []

    async def wait_for(self, marker: bytes, timeout: float = TIMEOUT) -> bool:
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        return False
                    self.seen.append(line)
                    if marker in line:
                        return True
        except TimeoutError:
            return False

    async def say(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()


@pytest.fixture
async def s_server(tls_ca: TestCA, tmp_path: Path) -> AsyncIterator[SServer]:
    binary = require_binary("openssl")
    pem = tmp_path / "server.pem"
    pem.write_bytes(tls_ca.server_cert.key_pem + tls_ca.server_cert.cert_pem)
    process = await asyncio.create_subprocess_exec(
        binary,
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-cert",
        str(pem),
        "-tls1_2",
        "-crlf",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        port = None
        async with asyncio.timeout(10):
            while port is None:
                line = await process.stdout.readline()
                assert line, "openssl s_server exited"
                found = re.search(rb"ACCEPT .*:(\d+)", line)
                port = int(found.group(1)) if found else None
        yield SServer(process, port)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_server_renegotiates_mid_conversation(s_server: SServer, tls_ca: TestCA) -> None:
    module = ModuleConfig(
        implicit_tls=True, timeout=TIMEOUT, ehlo="probe.test", tls_config=TLSConfig(ca_file=tls_ca.ca_file)
    )
    probe = asyncio.create_task(Prober().probe(*compiled(f"127.0.0.1:{s_server.port}", "smtps", module)))
    assert await s_server.wait_for(b"CIPHER is")
    await s_server.say(b"220 mail.test ESMTP s_server\n")
    assert await s_server.wait_for(b"EHLO probe.test")
    await s_server.say(b"r\n")  # renegotiate: s_server sends a HelloRequest now
    renegotiated = await s_server.wait_for(b"SSL_do_handshake -> 1")
    await s_server.say(b"250-mail.test\n250 8BITMIME\n")
    if await s_server.wait_for(b"QUIT"):
        await s_server.say(b"221 2.0.0 bye\n")
    result = await probe

    assert renegotiated, b"".join(s_server.seen).decode(errors="replace")
    assert result.duration_seconds < TIMEOUT
    assert result.success, result.failure
    assert result.tls is not None and result.tls.version == "TLSv1.2" and result.tls.verified
    assert [p.phase.value for p in result.phases] == ["connect", "tls", "banner", "ehlo", "quit"]
