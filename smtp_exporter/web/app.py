"""The HTTP server: /metrics, /probe, the status page and the lifecycle endpoints (aiohttp).

It runs on the exporter's one event loop, next to the probes. Every endpoint but
`/-/healthy` requires basic auth when the web config has users; bcrypt runs in worker
threads (at most a few at a time), never on the loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import math
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiohttp import web

from smtp_exporter.config.loader import ConfigError
from smtp_exporter.config.web import WebConfig, check_basic_auth
from smtp_exporter.metrics import (
    OPENMETRICS_CONTENT_TYPE,
    OPENMETRICS_EOF,
    TEXT_CONTENT_TYPE,
    render_probe_result,
    wants_openmetrics,
)
from smtp_exporter.presentation import probe_debug_text, series_transcript_text, transcript_text
from smtp_exporter.targets import TargetError, parse_target
from smtp_exporter.web.backend import WebBackend
from smtp_exporter.web.status_page import CONTENT_SECURITY_POLICY, history_page, status_page
from smtp_exporter.web.status_view import View

# How much earlier than Prometheus' scrape timeout a /probe must end, so the answer arrives in time.
SCRAPE_TIMEOUT_OFFSET = 0.5
# Request bounds: nothing the exporter serves needs a body or long headers.
MAX_REQUEST_BODY = 64 * 1024
MAX_LINE_SIZE = 8 * 1024
MAX_FIELD_SIZE = 8 * 1024
MAX_HEADERS = 64
# Bodies larger than this are gzipped in a worker thread, so a big scrape never stalls probes.
GZIP_IN_THREAD_BYTES = 256 * 1024
MAX_CONCURRENT_PASSWORD_CHECKS = 4
# Authorization headers that passed, remembered by the server (bounded, emptied when full). A
# remembered header is let in on the loop, without queueing for one of the few password-check
# threads: a client sending wrong passwords (each check ~80 ms of CPU, by bcrypt's design) can
# then hold those threads but never delay a scraper whose credentials already passed.
MAX_REMEMBERED_AUTHORIZATIONS = 64

_PUBLIC_PATHS = frozenset({"/-/healthy"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def scrape_deadline(header: str | None, module_timeout: float) -> float:
    """The /probe deadline: the module's timeout, or less when Prometheus' scrape timeout is shorter.

    The scrape timeout comes from X-Prometheus-Scrape-Timeout-Seconds; the probe ends
    SCRAPE_TIMEOUT_OFFSET seconds before it (or at half of it, for scrape timeouts of 1s or less).
    """
    if not header:
        return module_timeout
    try:
        scrape_timeout = float(header)
    except ValueError:
        return module_timeout
    if not math.isfinite(scrape_timeout) or scrape_timeout <= 0:
        return module_timeout
    if scrape_timeout > 2 * SCRAPE_TIMEOUT_OFFSET:
        limit = scrape_timeout - SCRAPE_TIMEOUT_OFFSET
    else:
        limit = scrape_timeout / 2
    return min(module_timeout, limit)


def _accepts_gzip(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower()
            return not (quality.startswith("q=") and quality[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # level 1: fast; 31: gzip framing
    return compressor.compress(body) + compressor.flush()


async def _payload(request: web.Request, body: bytes, content_type: str) -> web.Response:
    """A response with `body`, gzipped when the client accepts it."""
    if not _accepts_gzip(request) or len(body) < 1024:
        return web.Response(body=body, headers={"Content-Type": content_type})
    if len(body) >= GZIP_IN_THREAD_BYTES:
        compressed = await asyncio.get_running_loop().run_in_executor(None, _gzip, body)
    else:
        compressed = _gzip(body)
    return web.Response(
        body=compressed,
        headers={"Content-Type": content_type, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
    )


def _gzip_chunks(chunks: Iterable[bytes]) -> list[bytes]:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return [*(compressor.compress(chunk) for chunk in chunks), compressor.flush()]


async def _stream(request: web.Request, chunks: Iterable[bytes], content_type: str) -> web.StreamResponse:
    """A /metrics body written chunk by chunk, each dropped once written: at 10,000 targets it
    is tens of megabytes, and holding or joining all of it would leave that memory resident.
    Compressed, it is made whole first (in a thread) and sent with its length; plain, with
    chunked transfer encoding (HTTP/1.1) as its pieces are made."""
    headers = {"Content-Type": content_type}
    compressed: list[bytes] | None = None
    if _accepts_gzip(request):
        compressed = await asyncio.get_running_loop().run_in_executor(None, _gzip_chunks, chunks)
        headers.update({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    response = web.StreamResponse(headers=headers)
    if compressed is not None:
        response.content_length = sum(len(chunk) for chunk in compressed)
        chunks = compressed
    await response.prepare(request)
    for chunk in chunks:
        if chunk:
            await response.write(chunk)
    await response.write_eof()
    return response


async def _html(request: web.Request, page: str) -> web.Response:
    response = await _payload(request, page.encode(), "text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def _series(query: Mapping[str, str]) -> tuple[str, str, str | None, int | None]:
    """(target, module, mx_host, ip_protocol) of a scheduled series, as its pages' links name it."""
    family = query.get("ip_protocol")
    ip_protocol = int(family) if family in ("4", "6") else None
    return query.get("target", ""), query.get("module", ""), query.get("mx_host"), ip_protocol


def _text(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text if text.endswith("\n") else text + "\n", status=status, content_type="text/plain"
    )


class _Handlers:
    def __init__(self, backend: WebBackend) -> None:
        self.backend = backend
        self.probes_in_flight = 0
        self._password_checks = asyncio.Semaphore(MAX_CONCURRENT_PASSWORD_CHECKS)
        # Authorization headers that passed, per web config: SHA-256 digests, so no secret is kept.
        self._good_auth: dict[bytes, WebConfig] = {}

    # -- middlewares ----------------------------------------------------------------------------

    @web.middleware
    async def security(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Basic auth on every path but /-/healthy."""
        web_config = self.backend.web_config()
        response: web.StreamResponse
        if (
            web_config.auth_required
            and request.path not in _PUBLIC_PATHS
            and not await self._authorized(web_config, request.headers.get("Authorization", ""))
        ):
            response = _text("Unauthorized", 401)
            response.headers["WWW-Authenticate"] = 'Basic realm="smtp-exporter"'
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # 404, 405 ... get the configured headers too
                response = web.Response(status=exc.status, text=exc.text, headers=exc.headers)
        return response

    async def add_configured_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """The web config's headers on every answer, streamed ones included (on_response_prepare)."""
        for name, value in self.backend.web_config().headers:
            response.headers[name] = value

    async def _authorized(self, web_config: WebConfig, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic" or not credentials:
            return False
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        if self._good_auth.get(digest) is web_config:
            return True
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, colon, password = decoded.partition(":")
        if not colon:
            return False
        async with self._password_checks:
            ok = await asyncio.to_thread(check_basic_auth, web_config, username, password)
        if ok:
            if len(self._good_auth) >= MAX_REMEMBERED_AUTHORIZATIONS:
                self._good_auth.clear()  # bounded: at worst, checked again
            self._good_auth[digest] = web_config
        return ok

    # -- endpoints ------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        backend = self.backend
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        chunks = itertools.chain(
            (backend.health.render(openmetrics=openmetrics),),
            backend.store.render(openmetrics=openmetrics),
            (OPENMETRICS_EOF,) if openmetrics else (),
        )
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        return await _stream(request, chunks, content_type)

    async def probe(self, request: web.Request) -> web.Response:
        backend = self.backend
        snapshot = backend.snapshot()
        config = snapshot.config
        stats = backend.stats
        query = request.query
        module_name = query.get("module") or config.defaults.module
        module = snapshot.modules.get(module_name)
        counted_module = module_name if module is not None else ""
        target = query.get("target", "")
        if not target.strip():
            stats.count_probe_request(counted_module, 400)
            return _text("missing parameter: target", 400)
        if module is None:
            stats.count_probe_request("", 400)
            return _text(f"unknown module {module_name[:100]!r}", 400)
        try:
            parsed = parse_target(target, module.config.port)
        except TargetError as exc:
            stats.count_probe_request(module_name, 400)
            return _text(str(exc), 400)
        if not snapshot.allowlist.allows_target(parsed):
            stats.count_probe_request(module_name, 403)
            return _text(f"target {str(parsed)!r} is not allowed by http_probe.allowed_targets", 403)
        if self.probes_in_flight >= config.http_probe.max_concurrent:
            stats.count_probe_request(module_name, 503)
            return _text(
                f"too many concurrent /probe requests (http_probe.max_concurrent: "
                f"{config.http_probe.max_concurrent})",
                503,
            )
        deadline = scrape_deadline(
            # A delivery module's deadline covers its SMTP and IMAP parts.
            request.headers.get("X-Prometheus-Scrape-Timeout-Seconds"),
            module.config.total_timeout,
        )
        self.probes_in_flight += 1
        stats.probes_in_flight += 1
        try:
            result = await backend.prober.probe(parsed, module, target, timeout=deadline)
        finally:
            self.probes_in_flight -= 1
            stats.probes_in_flight -= 1
        stats.count_probe_request(module_name, 200)
        backend.history.add(result, scheduled=False)
        if query.get("debug", "").lower() == "true":
            body = render_probe_result(result, openmetrics=False)
            return _text(probe_debug_text(result, body))
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        body = render_probe_result(result, openmetrics=openmetrics)
        return await _payload(request, body, OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE)

    async def landing(self, request: web.Request) -> web.Response:
        backend = self.backend
        snapshot = backend.snapshot()
        config = snapshot.config
        page = status_page(
            backend.statuses(),
            View.from_query(request.query),
            allowlist=snapshot.allowlist,
            source=config.source,
            loaded_at=backend.stats.config_reload_success_timestamp,
            shard=(config.shard.count, config.shard.index),
        )
        return await _html(request, page)

    async def history(self, request: web.Request) -> web.Response:
        """The newest results of the history; of one scheduled series with target and module
        (and mx_host, ip_protocol as /transcript takes them)."""
        query = request.query
        history = self.backend.history
        if "target" not in query:
            return await _html(request, history_page(history, history.limit, None))
        series = _series(query)
        state = self.backend.find_series(*series)
        durations = None if state is None else state.recent_durations().tolist
        return await _html(request, history_page(history, history.limit, series, durations))

    async def transcript(self, request: web.Request) -> web.Response:
        """A history entry by `id`, or the latest probe of a scheduled series (target, module,
        and mx_host in mx_mode each, ip_protocol 4 or 6 under ip_protocol both)."""
        query = request.query
        history = self.backend.history
        if "id" in query:
            entry_id = query["id"]
            entry = history.get(int(entry_id)) if entry_id.isascii() and entry_id.isdigit() else None
            if entry is None:
                return _text(
                    f"no probe result {entry_id[:20]!r} in the history: only the newest "
                    f"{history.limit} are kept (metrics.history_limit)",
                    404,
                )
            return _text(transcript_text(entry.full_result()))
        state = self.backend.find_series(*_series(query))
        if state is None or state.latest is None:
            return _text("no probe result for this target and module (yet)", 404)
        latest = state.latest
        kept = history.find(latest)
        return _text(
            series_transcript_text(
                latest, None if kept is None else kept.full_result(), state.latest_failure, history.limit
            )
        )

    async def config(self, request: web.Request) -> web.Response:
        # YAML dumping is slow for big target lists: keep it off the loop that times probes.
        backend = self.backend
        return _text(await asyncio.to_thread(backend.effective_config, backend.snapshot().config))

    async def healthy(self, request: web.Request) -> web.Response:
        return _text("Healthy")

    async def ready(self, request: web.Request) -> web.Response:
        if self.backend.ready():
            return _text("Ready")
        return _text("Not ready", 503)

    async def reload(self, request: web.Request) -> web.Response:
        try:
            await self.backend.reload()
        except ConfigError as exc:
            return _text(f"failed to reload config: {exc}", 500)
        return _text("config reloaded")


def create_app(backend: WebBackend) -> web.Application:
    handlers = _Handlers(backend)
    # Without a web config file there are no users to check and no headers to add, and never
    # will be: leaving the middleware and the signal out saves a layer of aiohttp's handler chain
    # and a signal on every /probe. With one, they read the web config in force at each request.
    watched = backend.watches_web_config
    web_config = backend.web_config()
    middlewares = [handlers.security] if watched or web_config.auth_required else []
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BODY)
    if watched or web_config.headers:
        app.on_response_prepare.append(handlers.add_configured_headers)
    app.router.add_get("/", handlers.landing)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/probe", handlers.probe)
    app.router.add_get("/history", handlers.history)
    app.router.add_get("/transcript", handlers.transcript)
    app.router.add_get("/config", handlers.config)
    app.router.add_get("/-/healthy", handlers.healthy)
    app.router.add_get("/-/ready", handlers.ready)
    app.router.add_post("/-/reload", handlers.reload)
    return app


def runner_options() -> dict[str, object]:
    """aiohttp server options: no access log (it would cost more than a scrape), bounded requests."""
    return {
        "access_log": None,
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
        "max_headers": MAX_HEADERS,
        "handle_signals": False,
    }
