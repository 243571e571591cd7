"""A real HTTPS server on loopback port 443 (aiohttp), serving MTA-STS policies per Host header.

    with HttpsServer(tls_ca.issue("mta-sts.good.test")) as https:
        https.pages["mta-sts.good.test"] = Page(200, b"version: STSv1\\n...")
        # DNS: mta-sts.good.test A https.host

An MTA-STS policy URL has no port (RFC 8461 section 3.3), so the server must listen on 443: it
binds a random address of 127.0.0.0/8 (Linux routes the whole block to `lo`), which needs root
(CI runs as root) and keeps concurrent test runs from colliding on 127.0.0.1:443. A `Page` can be
any status (a redirect sends its `location`), and can declare a Content-Length it does not send.
Hosts without a page get 404. Every request is recorded in `requests` as (host, path).
"""

from __future__ import annotations

import errno
import random
import ssl
import threading
from dataclasses import dataclass

from aiohttp import web

from tests.servers.lifecycle import LoopThread, StartStop
from tests.servers.tls import ServerCert

BIND_ATTEMPTS = 20
PORT = 443


@dataclass(frozen=True, slots=True)
class Page:
    status: int = 200
    body: bytes = b""
    location: str | None = None  # for a redirect
    declared_length: int | None = None  # a Content-Length other than the body's; then the server hangs up
    content_type: str = "text/plain"
    chunked: bool = False  # sent in chunks, without a Content-Length


class HttpsServer(StartStop):
    def __init__(self, cert: ServerCert, *, host: str | None = None) -> None:
        self._cert = cert
        self._wanted = host
        self.host = ""
        self.pages: dict[str, Page] = {}
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._runner = LoopThread("https", self._open, self._close)

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._requests)

    def start(self) -> HttpsServer:
        self._runner.start()
        return self

    def stop(self) -> None:
        self._runner.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower() if request.host else ""
        with self._lock:
            self._requests.append((host, request.path))
        page = self.pages.get(host)
        if page is None or request.path != "/.well-known/mta-sts.txt":
            return web.Response(status=404, text="not found")
        headers = {"Location": page.location} if page.location else None
        if page.declared_length is None and not page.chunked:
            return web.Response(
                status=page.status, body=page.body, headers=headers, content_type=page.content_type
            )
        response = web.StreamResponse(status=page.status, headers=headers)
        response.content_type = page.content_type
        if page.chunked:
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(page.body), 4096):
                await response.write(page.body[start : start + 4096])
            await response.write_eof()
            return response
        response.content_length = page.declared_length
        await response.prepare(request)
        await response.write(page.body)
        assert request.transport is not None
        request.transport.close()  # fewer bytes than declared, then the end of the connection
        return response

    async def _open(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = self._cert.server_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        for _ in range(BIND_ATTEMPTS):
            host = (
                self._wanted
                or f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
            )
            site = web.TCPSite(runner, host, PORT, ssl_context=context, reuse_address=False)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self._wanted:
                    await runner.cleanup()
                    raise
                continue
            self.host = host
            return runner
        await runner.cleanup()
        raise OSError(errno.EADDRINUSE, f"no free loopback address for port {PORT}")

    async def _close(self, runner: web.AppRunner) -> None:
        await runner.cleanup()
