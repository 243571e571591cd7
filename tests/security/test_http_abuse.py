"""The exporter's HTTP server against bad clients: malformed requests on raw sockets, huge
headers and query strings, slow and idle clients, TLS without a client certificate, plain
HTTP on the TLS port; the /probe allowlist; and label values from servers bounded in
/metrics. After every abuse the server keeps answering ordinary requests."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtp_exporter.config.web import load_web_config
from tests.servers.scripted import DEFAULT_REPLIES as REPLIES
from tests.servers.scripted import Answer, ScriptedServer, Send
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA
from tests.service.conftest import Running, running_exporter, sample_value

NO_TARGETS = "modules:\n  quick: {timeout: 2s}\n"


async def raw_exchange(
    port: int, data: bytes, *, read_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
) -> bytes:
    """Send `data` on a fresh connection and read until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                    break
        return b"".join(chunks)
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


async def still_serving(running: Running) -> None:
    status, text = await running.get("/-/healthy")
    assert status == 200, text
    assert sample_value(await running.metrics(), "smtp_exporter_build_info") == 1


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


# A POST /-/reload announcing a 1 GB body it never sends in full: the handler ignores bodies,
# so answering it (then dropping the connection) is as right as refusing it.
VALID_BUT_ODD = {"huge_body"}
MALFORMED = {
    "garbage_request_line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "no_version": b"GET /metrics\r\n\r\n",
    "bad_method": b"G\x00T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "http_2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "huge_header": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
    "many_headers": b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(20000))
    + b"\r\n",
    "query_1mb": b"GET /probe?target=" + b"a" * (1 << 20) + b"&module=quick HTTP/1.1\r\nHost: x\r\n\r\n",
    "path_1mb": b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_content_length": b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "huge_body": b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 65536,
    "chunked_garbage": b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "smuggling": b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "nul_in_target": b"GET /probe?target=127.0.0.1%00:25&module=quick HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_percent": b"GET /probe?target=%zz%&module=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    "newline_in_target": b"GET /probe?target=127.0.0.1%0d%0aX-Injected:%201&module=quick HTTP/1.1\r\nHost: x\r\n\r\n",
}


async def test_malformed_requests_are_answered_4xx_or_dropped(write_config: Callable[[str], Path]) -> None:
    async with running_exporter(write_config(NO_TARGETS)) as running:
        port = running.exporter.addresses[0][1]
        for name, request in MALFORMED.items():
            started = time.monotonic()
            response = await raw_exchange(port, request)
            status = status_of(response)
            lowest = 200 if name in VALID_BUT_ODD else 400
            assert status is None or lowest <= status < 500, (name, response[:200])
            assert b"X-Injected" not in response.split(b"\r\n\r\n", 1)[0], name
            assert time.monotonic() - started < 10, name
            await still_serving(running)


async def test_slow_and_idle_clients_do_not_block_others(write_config: Callable[[str], Path]) -> None:
    """Slowloris: many connections each holding half a request, dribbling a header byte every
    so often, plus idle connections that never send anything: ordinary requests are still
    answered promptly meanwhile."""
    async with running_exporter(write_config(NO_TARGETS)) as running:
        port = running.exporter.addresses[0][1]
        writers: list[asyncio.StreamWriter] = []
        for i in range(200):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            if i % 2:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            writers.append(writer)
        try:
            for _ in range(10):
                for writer in writers[1::2]:
                    if not writer.is_closing():
                        writer.write(b"a")
                started = time.monotonic()
                await still_serving(running)
                assert time.monotonic() - started < 2.0
                await asyncio.sleep(0.2)
        finally:
            for writer in writers:
                writer.close()
        await still_serving(running)


async def test_tls_listener_requires_a_client_certificate(
    write_config: Callable[[str], Path], tls_ca: TestCA, tmp_path: Path
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {tls_ca.server_cert.cert_file}\n  key_file: {tls_ca.server_cert.key_file}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tls_ca.ca_file}\n"
    )
    client_cert = tls_ca.issue("scraper.test")
    with_cert = ssl.create_default_context(cafile=tls_ca.ca_file)
    with_cert.load_cert_chain(client_cert.cert_file, client_cert.key_file)
    without_cert = ssl.create_default_context(cafile=tls_ca.ca_file)
    other_ca_cert = tls_ca.self_signed("scraper.test")
    wrong_cert = ssl.create_default_context(cafile=tls_ca.ca_file)
    wrong_cert.load_cert_chain(other_ca_cert.cert_file, other_ca_cert.key_file)

    async with running_exporter(write_config(NO_TARGETS), web_config=load_web_config(str(web))) as running:
        url = running.url.replace("http://", "https://")
        port = running.exporter.addresses[0][1]

        async def get(context: ssl.SSLContext) -> int:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
                session.get(url + "/metrics") as response,
            ):
                await response.read()
                return response.status

        assert await get(with_cert) == 200
        for context in (without_cert, wrong_cert):
            with pytest.raises(aiohttp.ClientError):
                await get(context)
            assert await get(with_cert) == 200
        # Plain HTTP and garbage on the TLS port: refused, never answered in the clear.
        for data in (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00" * 1000,
            b"\x16\x03\x01\xff\xff" + b"x" * 70000,
        ):
            response = await raw_exchange(port, data, read_timeout=5)
            assert not response.startswith(b"HTTP/"), response[:100]
            assert await get(with_cert) == 200


ALLOWLIST = """
http_probe:
  allowed_targets: ["*.allowed.test", "127.0.0.0/30:{port}", "[::1]:{port}", ":2525"]
"""


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("127.0.0.1:{port}", True),  # CIDR with the port
        ("127.0.0.2:{port}", True),
        ("127.0.0.1:{other}", False),  # CIDR, wrong port
        ("127.0.0.9:{port}", False),  # outside the CIDR
        ("[::ffff:127.0.0.1]:{other}", False),  # IPv4-mapped form, wrong port
        ("[::1]:{other}", False),
        ("10.0.0.1:{port}", False),
        ("169.254.169.254:80", False),  # cloud metadata
        ("mx.allowed.test:{other}", True),  # host pattern, any port (not resolvable: fails, but allowed)
        ("allowed.test:{port}", False),  # the pattern is for subdomains only
        ("evil-allowed.test:{port}", False),
        ("mx.allowed.test.evil.org:{port}", False),
        ("localhost:{port}", False),  # names are not resolved to match CIDRs
        ("anything.example:2525", True),  # port-only rule
        ("[::1]:2525", True),
    ],
)
async def test_probe_allowlist(
    write_config: Callable[[str], Path], smtp_sink: SmtpSink, target: str, allowed: bool
) -> None:
    config = NO_TARGETS + ALLOWLIST.format(port=smtp_sink.port)
    async with running_exporter(write_config(config)) as running:
        query = urlencode(
            {"target": target.format(port=smtp_sink.port, other=smtp_sink.port + 1), "module": "quick"}
        )
        status, text = await running.get("/probe?" + query)
        if allowed:
            assert status == 200, text
        else:
            assert status == 403, text
            assert "smtp_probe" not in text


async def test_label_values_from_servers_are_bounded(
    write_config: Callable[[str], Path],
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    """Whatever a server sends (a 4,000-character greeting, 60 made-up extensions with long
    names, new ones on every connection), the label values in /metrics stay short and the
    number of series stays bounded: old extensions go when the next probe does not see them."""
    connection = 0

    def script(n: int) -> list[object]:
        nonlocal connection
        connection = n
        ehlo = (
            b"250-mail.test\r\n"
            + b"".join(b"250-X-%d-%d-%s\r\n" % (n, i, b"K" * 50) for i in range(60))
            + b"250 STARTTLS\r\n"
        )
        return [
            Send(b"220 " + b"B" * 4000 + b"\r\n"),
            Answer({**REPLIES, "EHLO": ehlo, "STARTTLS": b"220 go\r\n"}),
        ]

    server = await scripted_server(script)
    config = (
        "modules:\n  quick: {timeout: 900ms, starttls: never}\n"
        f"targets:\n  - {{target: '{server.target}', module: quick, interval: 1s}}\n"
    )
    async with running_exporter(write_config(config)) as running:
        scrapes = []
        for _ in range(6):
            await asyncio.sleep(1.0)
            scrapes.append(await running.metrics())
        assert connection >= 3
        for text in scrapes:
            extensions = 0
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    for name, value in sample.labels.items():
                        assert len(value) <= 256, (sample.name, name, value[:80])
                    if sample.name == "smtp_probe_extension_info":
                        extensions += 1
            assert extensions <= 64
