"""The IMAP connection of the delivery check: asyncio streams driving delivery/imap.py.

Written here rather than on aioimaplib (2.0.3): that library cannot upgrade a connection with
STARTTLS, buffers a line without CR LF without bound, and runs its own timers and tasks, so
neither the phases' timing nor the probe's deadline would be ours. This client is small: each
command is sent, and its responses read through the bounded `ResponseParser`, by the probe's
own task; the deadline is the caller's `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from smtp_exporter.delivery.imap import (
    IMAPProtocolError,
    Response,
    ResponseParser,
    split_literals,
)
from smtp_exporter.model import TranscriptEvent
from smtp_exporter.probe.connection import perf_counter
from smtp_exporter.protocol.auth import REDACTED

MAX_TRANSCRIPT_EVENTS = 200  # a SEARCH answer a line, a FETCH one: the rest is not kept
READ_CHUNK = 65536


class ConnectionClosed(Exception):
    """The server closed the connection (or said BYE) before the response the client needed."""


class IMAPConnection:
    """One IMAP connection: `command()` sends a command and returns its tagged response and the
    untagged ones before it; `events` is its part of the probe's transcript."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, events: list[TranscriptEvent]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.events = events
        self._parser = ResponseParser()
        self._pending: deque[Response] = deque()
        self._tags = 0
        self.last_read = 0.0  # when the latest response was read (perf_counter)

    def note(self, direction: str, text: str, at: float | None = None) -> None:
        if len(self.events) < MAX_TRANSCRIPT_EVENTS:
            self.events.append((perf_counter() if at is None else at, direction, text))

    async def read(self) -> Response:
        """The next response, read as it comes."""
        while not self._pending:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise ConnectionClosed("connection closed by the server")
            self.last_read = perf_counter()
            self._pending.extend(self._parser.feed(data))
        response = self._pending.popleft()
        self.note("S", response.summary())
        return response

    async def greeting(self) -> Response:
        response = await self.read()
        if response.tag != "*":
            raise IMAPProtocolError(f"a greeting that is not untagged: {response.summary()[:80]}")
        return response

    def send(self, data: bytes, shown: str | None = None) -> None:
        self.note("C", shown if shown is not None else data.decode("utf-8", "replace").rstrip("\r\n"))
        self.writer.write(data)

    async def command(
        self, line: bytes, shown: str | None = None, *, bye: bool = False
    ) -> tuple[Response, list[Response]]:
        """Send `line` (without tag and CR LF; synchronizing literals sent after each "+"), and
        read up to its tagged response. `shown`: the transcript's text instead of the line, whose
        literals are then not shown either (credentials). `bye`: an untagged BYE is expected
        (LOGOUT), not the end of the connection."""
        self._tags += 1
        tag = f"a{self._tags}"
        pieces = split_literals(tag.encode() + b" " + line + b"\r\n")
        untagged: list[Response] = []
        for index, piece in enumerate(pieces):
            if shown is None:
                self.send(piece)
            else:
                self.send(piece, f"{tag} {shown}" if index == 0 else REDACTED)
            if index == len(pieces) - 1:
                break
            while True:  # the continuation that lets the literal go
                response = await self.read()
                if response.tag == "+":
                    break
                if response.tag == tag:
                    return response, untagged
                self._untagged(response, untagged, bye)
        while True:
            response = await self.read()
            if response.tag == tag:
                return response, untagged
            if response.tag != "+":
                self._untagged(response, untagged, bye)

    @staticmethod
    def _untagged(response: Response, untagged: list[Response], bye: bool = False) -> None:
        if response.tag == "*" and response.status == "BYE" and not bye:
            raise ConnectionClosed(f"the server said {response.summary()[:200]}")
        untagged.append(response)

    async def idle(self, wait: float) -> tuple[float | None, Response | None]:
        """IDLE (RFC 2177) until the mailbox reports a new message (EXISTS) or `wait`
        seconds pass, then DONE. Returns when the news arrived (None: none did) and the tagged
        reply to IDLE (None when the server refused IDLE before its continuation: the reply
        is then the one returned)."""
        self._tags += 1
        tag = f"a{self._tags}"
        self.send(f"{tag} IDLE\r\n".encode())
        news: float | None = None
        while True:
            response = await self.read()
            if response.tag == "+":
                break
            if response.tag == tag:
                return None, response
            if response.tag == "*" and response.status == "EXISTS":
                news = self.last_read
        if news is None:
            try:
                async with asyncio.timeout(wait):
                    while news is None:
                        response = await self.read()
                        if response.tag == "*" and response.status == "EXISTS":
                            news = self.last_read
                        elif response.tag == "*" and response.status == "BYE":
                            raise ConnectionClosed(f"the server said {response.summary()[:200]}")
            except TimeoutError:
                pass
        self.send(b"DONE\r\n")
        while True:
            response = await self.read()
            if response.tag == tag:
                return news, response
            if response.tag == "*" and response.status == "EXISTS" and news is None:
                news = self.last_read

    def buffered(self) -> bool:
        """Whether bytes were read past the latest response (before STARTTLS: an injection)."""
        return bool(self._pending) or self._parser.buffered

    async def start_tls(self, context: ssl.SSLContext, server_name: str) -> None:
        await self.writer.start_tls(context, server_hostname=server_name)

    def close(self) -> None:
        self.writer.transport.abort()
