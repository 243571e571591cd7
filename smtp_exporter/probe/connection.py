"""The thin asyncio layer: one SMTP client connection driving the pure `ReplyParser`.

An `asyncio.Protocol` rather than streams: bytes go straight from the transport into the
parser, and the moment a reply completes is taken in `data_received`, before any task
switch, so a busy event loop adds as little as possible to the measured phase.

A run of commands that needs no decision between them but "was the reply's code one of the
expected ones" (MAIL, RCPT, DATA, the message) goes as a `Script`: each command is written from
`data_received` as soon as the previous reply arrives, so the probe's task wakes once for the
run instead of once a command, and no task switch sits between a reply and the next command.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Sequence
from typing import NamedTuple

from smtp_exporter.model import Failure, FailureReason, Phase
from smtp_exporter.probe.errors import ProbeError
from smtp_exporter.protocol import NotAReplyError, ProtocolError, Reply, ReplyParser

perf_counter = time.perf_counter


class Step(NamedTuple):
    """One command of a script: sent when the previous reply had one of its step's codes."""

    phase: Phase
    line: bytes
    expected: tuple[int, ...]  # the codes this command's reply may have for the script to go on
    shown: str | None = None  # what the transcript says was sent, when not the line itself


class Script:
    """Commands sent one after another from `data_received` (see the module's docstring).

    `sent[i]` and `replies[i]` are when step i was written and its reply with the time it
    arrived. It ends (`done`) after the last reply, after a reply with a code its step did not
    expect, or with `error` when the connection broke or the server spoke out of turn. `error`
    is data, never a raised exception: one kept here would hold its traceback's frames, and
    through them this script, in a cycle only the cyclic collector frees.
    """

    __slots__ = ("done", "error", "replies", "sent", "steps")

    def __init__(self, steps: Sequence[Step], done: asyncio.Future[None]) -> None:
        self.steps = steps
        self.done = done
        self.sent: list[float] = []
        self.replies: list[tuple[Reply, float]] = []
        self.error: Failure | None = None


class SMTPClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_error",
        "_parser",
        "_replies",
        "_script",
        "_waiter",
        "connected_at",
        "transport",
    )

    def __init__(self) -> None:
        self._parser = ReplyParser()
        self._replies: collections.deque[tuple[Reply, float]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: ProtocolError | None = None
        self._closed: BaseException | bool = False
        self._script: Script | None = None
        self.transport: asyncio.Transport | None = None
        self.connected_at = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_at = perf_counter()
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            replies = self._parser.feed(data)
        except ProtocolError as exc:
            self._error = exc
            if self.transport is not None:
                self.transport.pause_reading()
            self._wake()
            return
        if replies:
            now = perf_counter()
            for reply in replies:
                self._replies.append((reply, now))
            if self._script is not None:
                self._advance(self._script)
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = exc if exc is not None else True
        self._wake()

    def _wake(self) -> None:
        script = self._script
        if (
            script is not None
            and not self._replies
            and (self._error is not None or self._closed is not False)
        ):
            try:
                self._raise_if_broken(script.steps[len(script.sent) - 1].phase)
            except ProbeError as exc:
                script.error = Failure(exc.phase, exc.reason, exc.message)
            self._end_script(script)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Scripts

    def start_script(self, steps: Sequence[Step]) -> Script:
        """Send the first step now (raising as `send` does) and the others as replies arrive."""
        script = Script(steps, asyncio.get_running_loop().create_future())
        script.sent.append(self.send(steps[0].phase, steps[0].line))
        self._script = script
        return script

    def stop_script(self) -> None:
        """Send nothing more for the script (its probe is over, e.g. by its deadline)."""
        self._script = None

    def _advance(self, script: Script) -> None:
        reply_at = self._replies.popleft()
        script.replies.append(reply_at)
        index = len(script.replies)
        if reply_at[0].code not in script.steps[index - 1].expected or index == len(script.steps):
            self._end_script(script)
            return
        step = script.steps[index]
        try:
            script.sent.append(self.send(step.phase, step.line))
        except ProbeError as exc:
            script.error = Failure(exc.phase, exc.reason, exc.message)
            self._end_script(script)
        except OSError as exc:  # a write to a socket the peer has reset
            script.error = Failure(step.phase, FailureReason.CONNECTION_CLOSED, f"connection lost: {exc}")
            self._end_script(script)

    def _end_script(self, script: Script) -> None:
        self._script = None
        if not script.done.done():
            script.done.set_result(None)

    # What the engine calls

    async def read_reply(self, phase: Phase) -> tuple[Reply, float]:
        """The next complete reply and the perf_counter() time its last line arrived."""
        while not self._replies:
            self._raise_if_broken(phase)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()

    def _raise_if_broken(self, phase: Phase) -> None:
        if self._error is not None:
            reason = (
                FailureReason.UNEXPECTED_REPLY
                if isinstance(self._error, NotAReplyError)
                else FailureReason.PROTOCOL_ERROR
            )
            raise ProbeError(phase, reason, str(self._error))
        if self._closed is not False:
            detail = f": {self._closed}" if isinstance(self._closed, BaseException) else ""
            raise ProbeError(
                phase, FailureReason.CONNECTION_CLOSED, f"connection closed by the server{detail}"
            )

    def send(self, phase: Phase, data: bytes) -> float:
        """Write a command; returns the perf_counter() time it was handed to the socket."""
        if self._replies:
            reply, _ = self._replies[0]
            raise ProbeError(
                phase,
                FailureReason.PROTOCOL_ERROR,
                f"unsolicited reply before {phase.value}: {reply.summary()}",
            )
        self._raise_if_broken(phase)
        assert self.transport is not None
        started = perf_counter()
        self.transport.write(data)
        return started

    def ready_for_tls(self, phase: Phase) -> None:
        """Refuse to start TLS over bytes the server sent in the clear after its 220
        (CVE-2011-0411-style injection): they would be read as if protected."""
        if self._replies or self._parser.pending:
            raise ProbeError(phase, FailureReason.PROTOCOL_ERROR, "server sent data after its STARTTLS reply")

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, timeout: float) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport,
            self,
            context,
            server_hostname=server_hostname,
            ssl_handshake_timeout=max(timeout, 0.001),
        )
        assert transport is not None
        self.transport = transport

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
