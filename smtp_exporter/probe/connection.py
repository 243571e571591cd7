"""The thin asyncio layer: one connection feeding one `ClientSession` (protocol/session.py).

An `asyncio.Protocol` rather than streams: bytes go straight from the transport into the
session, the moment they arrived is taken on entry to `data_received`, and the session handles them
(and its answer is written) from one `call_soon` right after the loop's current poll. The probe's task wakes only when the
session needs it (to start TLS, or when the conversation is over), not once per command, so a
busy event loop adds as little as possible to the measured phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

from smtp_exporter.protocol import ClientSession
from smtp_exporter.protocol.exchange import DONE, TALKING

perf_counter = time.perf_counter

# Linux only: elsewhere the kernel's ACK timing is left as it is.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class SMTPClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_connect_started",
        "_handshake_input",
        "_handshaking",
        "_inbox",
        "_loop",
        "_waiter",
        "lost",
        "session",
        "transport",
    )

    def __init__(self, session: ClientSession, connect_started: float) -> None:
        self.session = session
        self._connect_started = connect_started
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        # Chunks stamped in data_received, handed to the session by a call_soon (see there).
        self._inbox: list[tuple[bytes, float]] = []
        # While loop.start_tls runs, what the TLS layer decrypts early waits here for the
        # session, which hears of the handshake only when the probe's task resumes.
        self._handshaking = False
        self._handshake_input: list[tuple[bytes, float]] = []
        self.lost: tuple[float, str | None] | None = None  # when, and what broke it
        self.transport: asyncio.Transport | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session.connection_made(self._connect_started, perf_counter())

    def data_received(self, data: bytes) -> None:
        now = perf_counter()
        if self._handshaking:
            self._handshake_input.append((data, now))
            return
        # Stamped now, handled after this poll's other callbacks: replies of many conversations
        # arrive in one poll, and each waits, unstamped, for the callbacks before it. Handling a
        # reply here (parse, session, the next write) made that wait part of every phase.
        self._inbox.append((data, now))
        if len(self._inbox) == 1:
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        inbox, self._inbox = self._inbox, []
        session = self.session
        for data, at in inbox:
            session.data_received(data, at)
        if self.lost is not None and not self._handshaking:
            session.connection_lost(*self.lost)
        if session.has_output:
            self.flush()
        if session.status is not TALKING:
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (perf_counter(), str(exc) if exc is not None else None)
        if self._inbox:
            return  # _drain tells the session, after the bytes that came before
        if not self._handshaking:
            self.session.connection_lost(*self.lost)
        self._wake()

    # What the probe's task calls

    def flush(self) -> None:
        """Write what the session has queued (several commands go as one write)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(self.session.bytes_to_send(perf_counter()))

    async def wait(self) -> None:
        """Until the session needs the task: to start TLS, or at its end (CLOSING, DONE)."""
        while self.session.status is TALKING:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def wait_done(self) -> None:
        while self.session.status is not DONE:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, timeout: float) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._handshaking = True
        try:
            transport = await loop.start_tls(
                self.transport,
                self,
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=max(timeout, 0.001),
            )
        finally:
            self._handshaking = False
        assert transport is not None
        self.transport = transport

    def handshake_done(self) -> None:
        """After `session.tls_established`: what arrived meanwhile, then what the session says."""
        session = self.session
        held, self._handshake_input = self._handshake_input, []
        for data, at in held:
            session.data_received(data, at)
        if self.lost is not None:
            session.connection_lost(*self.lost)
        # TLS 1.3 servers send their session tickets after the handshake, data we never answer.
        # A server with Nagle on (Postfix's smtpd) then holds its next reply (the EHLO reply, or
        # the greeting after implicit TLS) until that ticket is acknowledged, and a delayed ACK
        # took up to 40 ms: ehlo_tls measured our ACK timer, not the server. Acknowledge at once:
        # before the EHLO (an ACK already pending goes out now) and after writing it (a write
        # soon after a read puts Linux back into delayed-ACK mode, and the ticket may be in flight).
        self._acknowledge_promptly()
        if session.has_output:
            self.flush()
            self._acknowledge_promptly()

    def _acknowledge_promptly(self) -> None:
        if _TCP_QUICKACK is None or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # OSError: the connection is already gone, and there is nothing left to acknowledge.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        if self.transport is None:
            return None
        obj: ssl.SSLObject | None = self.transport.get_extra_info("ssl_object")
        return obj

    def close(self, *, abort: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        elif self.transport is not None and abort:
            self.transport.abort()
