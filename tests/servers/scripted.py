"""A scripted, misbehaving SMTP server: asyncio (or uvloop), in-process, 127.0.0.1 (and optionally ::1), port 0.

Each connection runs a script, a sequence of steps:

    async with ScriptedServer([Send(b"220 hi\\r\\n"), ExpectLine(), Close()]) as server:
        result = await probe(server.target)          # the client runs on the same loop
        assert await server.wait_closed(5)           # the client closed its socket

Steps: `Send`, `ExpectLine`, `ExpectData`, `Sleep`, `Trickle`, `Forever`, `Close`, `Reset`
(RST via SO_LINGER 0), `HalfClose`, `StartTLS` (server-side upgrade) and `Answer` (a minimal
SMTP responder until QUIT, to build variants of a normal conversation). When the script
ends without closing, the server keeps the connection open, silently, until the client
closes it or the server stops, so a client that never closes is seen as a leak.

The server runs on the caller's event loop: drive it with an asyncio client only (a
blocking client on the same loop would deadlock). Everything the client sends is recorded
per connection (`connections[i].received`, `.lines`), as is who closed the socket
(`client_closed`, `server_closed`). Leaving the `async with` cancels every script task and
aborts every connection, so no test can hang on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

MAX_RECORDED_BYTES = 8 << 20  # per connection; what a client sends past this is dropped
BIND_ATTEMPTS = 20


# -- steps ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class ExpectLine:
    """Wait for one line from the client (up to LF). The script ends if the client closes."""


@dataclass(frozen=True, slots=True)
class ExpectData:
    """Wait until the client sends anything not yet consumed (e.g. a TLS ClientHello)."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Trickle:
    """Send `data` one byte at a time, `interval` seconds apart."""

    data: bytes
    interval: float


@dataclass(frozen=True, slots=True)
class Forever:
    """Send `data` again and again (respecting flow control) until the client goes away."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close gracefully (FIN after pending data)."""


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort with SO_LINGER 0: the client sees a TCP RST."""


@dataclass(frozen=True, slots=True)
class HalfClose:
    """Shut down the sending side only (FIN); keep reading."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Upgrade the connection to TLS, server side (after sending e.g. "220 Go ahead")."""

    context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer each client line by its verb from `replies` until QUIT (then close).

    Keys are upper-case verbs; "." is the reply after the message's final dot. A DATA reply
    that starts with 354 makes it read the message first. Unknown verbs get `default`.
    """

    replies: Mapping[str, bytes]
    default: bytes = b"500 5.5.2 Command not recognized\r\n"


Step = (
    Send | ExpectLine | ExpectData | Sleep | Trickle | Forever | Close | Reset | HalfClose | StartTLS | Answer
)
Script = Sequence[Step]


# -- ready-made scripts ------------------------------------------------------------------

BANNER = b"220 mail.test ESMTP scripted\r\n"
EHLO_REPLY = b"250-mail.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"
EHLO_STARTTLS_REPLY = b"250-mail.test\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"
DEFAULT_REPLIES: Mapping[str, bytes] = {
    "EHLO": EHLO_REPLY,
    "HELO": b"250 mail.test\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ".": b"250 2.0.0 Ok: queued\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
}


def until_rcpt() -> list[Step]:
    """A normal server up to (and reading) the RCPT command: the script goes on from there."""
    return [
        Send(BANNER),
        ExpectLine(),
        Send(EHLO_REPLY),
        ExpectLine(),
        Send(b"250 2.1.0 Ok\r\n"),
        ExpectLine(),
    ]


def minimal_conversation(*, banner: bytes = BANNER, **overrides: bytes) -> list[Step]:
    """A normal server: banner, then `DEFAULT_REPLIES` (override per verb, e.g. RCPT=b"550 ...")."""
    return [Send(banner), Answer({**DEFAULT_REPLIES, **overrides})]


def starttls_conversation(context: ssl.SSLContext, **overrides: bytes) -> list[Step]:
    """A normal server that offers STARTTLS, upgrades, then answers like `minimal_conversation`."""
    return [
        Send(BANNER),
        ExpectLine(),
        Send(EHLO_STARTTLS_REPLY),
        ExpectLine(),
        Send(b"220 2.0.0 Ready to start TLS\r\n"),
        StartTLS(context),
        Answer({**DEFAULT_REPLIES, **overrides}),
    ]


def garbage_greeting() -> list[Step]:
    """Another protocol's greeting instead of 220 (an SSH server on port 25)."""
    return [Send(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")]


def silence() -> list[Step]:
    """Accept the connection and never say anything."""
    return []


def trickle(interval: float = 0.2) -> list[Step]:
    """A banner sent one byte every `interval` seconds (about 12 s at 0.2: outlasts a short deadline)."""
    return [Trickle(b"220 mail.test ESMTP " + b"." * 40 + b"\r\n", interval)]


def endless_multiline(*, at_banner: bool = False) -> list[Step]:
    """A multi-line reply that never ends: the banner itself, or the EHLO reply."""
    if at_banner:
        return [Forever(b"220-still greeting you\r\n")]
    return [Send(BANNER), ExpectLine(), Forever(b"250-ENDLESS-EXTENSION\r\n")]


def megabyte_line() -> list[Step]:
    """A banner of 1 MiB without any line end."""
    return [Send(b"220 " + b"x" * (1 << 20))]


def close_after_ehlo() -> list[Step]:
    """Greets, reads EHLO, then closes without answering it."""
    return [Send(BANNER), ExpectLine(), Close()]


def starttls_no_tls(*, reply: bytes | None = b"250 2.0.0 still speaking plaintext\r\n") -> list[Step]:
    """Offers STARTTLS and answers 220, then does not speak TLS.

    With `reply` (default) it answers the client's TLS ClientHello with that plaintext, so
    the handshake fails at once; with `reply=None` it stays silent (the handshake times out).
    """
    steps: list[Step] = [
        Send(BANNER),
        ExpectLine(),
        Send(EHLO_STARTTLS_REPLY),
        ExpectLine(),
        Send(b"220 2.0.0 Ready to start TLS\r\n"),
    ]
    if reply is not None:
        steps += [ExpectData(), Send(reply)]
    return steps


# -- the server ------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class ScriptedConnection:
    """What happened on one connection."""

    peer: tuple[object, ...]
    received: bytearray = field(default_factory=bytearray)
    tls: bool = False
    client_closed: bool = False  # the client closed or reset it while the server held it open
    server_closed: bool = False  # the script closed or reset it (or the server stopped)
    error: str | None = None  # e.g. the server-side TLS handshake failure

    @property
    def closed(self) -> bool:
        return self.client_closed or self.server_closed

    @property
    def lines(self) -> list[bytes]:
        """Complete lines the client sent, line ends included."""
        return [line + b"\n" for line in bytes(self.received).split(b"\n")[:-1]]


class _ClientGone(Exception):
    pass


class _Connection(asyncio.Protocol):
    def __init__(self, server: ScriptedServer, script: Script) -> None:
        self.server = server
        self.script = script
        self.record = ScriptedConnection(peer=())
        self.transport: asyncio.Transport | None = None
        self.cursor = 0  # how much of record.received the script has consumed
        self.changed = asyncio.Event()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.task: asyncio.Task[None] | None = None
        self.gone = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # called again by start_tls for the TLS transport
            return
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)
        self.record.peer = tuple(transport.get_extra_info("peername") or ())
        self.server._opened(self)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        room = MAX_RECORDED_BYTES - len(self.record.received)
        if room > 0:
            self.record.received += data[:room]
        self._wake()

    def eof_received(self) -> bool:
        self._client_went_away()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_went_away()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def _client_went_away(self) -> None:
        if not self.gone:
            self.gone = True
            if not self.record.server_closed:
                self.record.client_closed = True
            if self.task is not None and self.task is not asyncio.current_task():
                self.task.cancel()
            self.server._closed()
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # running the script
    async def _run(self) -> None:
        try:
            for step in self.script:
                await self._step(step)
                if self.gone:
                    return
            # Script over: hold the connection, silently, until the client closes it.
            while not self.gone:
                await self.changed.wait()
        except _ClientGone:
            pass
        except Exception as exc:  # a broken script: shown in the record, never swallowed silently
            self.record.error = f"script failed: {exc!r}"
            self._close_by_server(abort=True)
            raise
        finally:
            if not self.gone:
                self._close_by_server(abort=False)

    async def _write(self, data: bytes) -> None:
        if self.gone or self.transport is None:
            raise _ClientGone
        self.transport.write(data)
        if not self.can_write.is_set():
            await self.can_write.wait()
            if self.gone:
                raise _ClientGone

    async def _read_line(self) -> bytes:
        while True:
            end = self.record.received.find(b"\n", self.cursor)
            if end >= 0:
                line = bytes(self.record.received[self.cursor : end + 1])
                self.cursor = end + 1
                return line
            if self.gone:
                raise _ClientGone
            await self.changed.wait()

    async def _step(self, step: Step) -> None:
        match step:
            case Send(data):
                await self._write(data)
            case ExpectLine():
                await self._read_line()
            case ExpectData():
                while len(self.record.received) <= self.cursor:
                    if self.gone:
                        raise _ClientGone
                    await self.changed.wait()
                self.cursor = len(self.record.received)
            case Sleep(seconds):
                await asyncio.sleep(seconds)
            case Trickle(data, interval):
                for i in range(len(data)):
                    await self._write(data[i : i + 1])
                    await asyncio.sleep(interval)
            case Forever(data):
                batch = data * max(1, 16384 // max(1, len(data)))
                while True:
                    await self._write(batch)
                    await asyncio.sleep(0)  # let the client (same loop) run
            case Close():
                self._close_by_server(abort=False)
            case Reset():
                self._close_by_server(abort=True)
            case HalfClose():
                assert self.transport is not None
                self.transport.write_eof()
            case StartTLS(context):
                await self._start_tls(context)
            case Answer():
                await self._answer(step)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=30
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            self.record.error = f"TLS handshake failed: {exc}"
            self._close_by_server(abort=True)
            raise _ClientGone from exc
        if tls is None:
            raise _ClientGone
        self.transport = tls
        self.record.tls = True

    async def _answer(self, step: Answer) -> None:
        while True:
            line = await self._read_line()
            verb = line.split(maxsplit=1)[0].upper().decode("ascii", "replace") if line.strip() else ""
            reply = step.replies.get(verb, step.default)
            await self._write(reply)
            if verb == "QUIT":
                self._close_by_server(abort=False)
                return
            if verb == "DATA" and reply.startswith(b"354"):
                while (await self._read_line()).rstrip(b"\r\n") != b".":
                    pass
                await self._write(step.replies.get(".", step.default))

    def _close_by_server(self, *, abort: bool) -> None:
        if self.transport is None or self.gone:
            return
        self.record.server_closed = True
        if abort:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()
        self._client_went_away()


class ScriptedServer:
    """Runs `script` on every connection (or `script(n)` for the n-th connection, from 0).

    `hosts` are the addresses to listen on, all on the same port (port 0 for the first,
    then that port for the others, retried if the port is taken there): e.g.
    ("127.0.0.1", "::1") for a dual-stack "localhost" target.
    """

    def __init__(
        self,
        script: Script | Callable[[int], Script],
        *,
        hosts: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        self._script = script
        self.hosts = tuple(hosts)
        self.port = 0
        self._servers: list[asyncio.Server] = []
        self._protocols: list[_Connection] = []
        self._changed = asyncio.Event()

    @property
    def host(self) -> str:
        return self.hosts[0]

    @property
    def address(self) -> tuple[str, int]:
        return (self.hosts[0], self.port)

    @property
    def target(self) -> str:
        """`host:port` of the first address, the form a probe target takes."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connections(self) -> list[ScriptedConnection]:
        return [p.record for p in self._protocols]

    @property
    def connections_open(self) -> int:
        return sum(1 for p in self._protocols if not p.gone)

    async def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once every connection so far is closed (by either side); False on timeout."""
        return await self._wait_for(lambda: self.connections_open == 0, timeout)

    async def wait_connections(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once at least `count` connections were accepted; False on timeout."""
        return await self._wait_for(lambda: len(self._protocols) >= count, timeout)

    async def _wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _opened(self, connection: _Connection) -> None:
        self._protocols.append(connection)
        self._notify()

    def _closed(self) -> None:
        self._notify()

    def _factory(self) -> _Connection:
        script = self._script(len(self._protocols)) if callable(self._script) else self._script
        return _Connection(self, script)

    async def start(self) -> ScriptedServer:
        loop = asyncio.get_running_loop()
        for attempt in range(BIND_ATTEMPTS):
            try:
                port = 0
                # The busiest address first: its port taken, the others are rarely in use.
                for host in sorted(self.hosts, key=lambda host: host != "127.0.0.1"):
                    server = await loop.create_server(self._factory, host, port, reuse_address=True)
                    self._servers.append(server)
                    port = server.sockets[0].getsockname()[1]
                self.port = port
                return self
            except OSError as exc:
                await self._close_servers()
                if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def stop(self) -> None:
        """Stop listening, cancel every script, abort every connection still open."""
        for server in self._servers:
            server.close()
        tasks = []
        for protocol in self._protocols:
            if protocol.task is not None:
                protocol.task.cancel()
                tasks.append(protocol.task)
            if not protocol.gone and protocol.transport is not None:
                protocol.record.server_closed = True
                protocol.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_servers()

    async def __aenter__(self) -> ScriptedServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
