"""A ClientSession driven by hand over an explicit clock, for the mail transaction's tests
(tests/protocol/test_pipelining.py, test_envelope.py).

Every input to the session is one tick of the clock, and whatever the session queued is
written at the next tick, so each write and each reply has a known time and a phase's
duration is exact. The test plays the server: it reads `writes` and feeds replies, in
whatever chunks it likes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.schema import ModuleConfig
from smtp_exporter.model import Phase, Transaction
from smtp_exporter.protocol import ClientSession, Outcome, Status, build_message
from smtp_exporter.protocol.message import Token

BANNER = b"220 mail.test ESMTP\r\n"
# What Postfix offers, in its order (less ETRN, DSN and VRFY).
EHLO_ALL = (
    b"250-mail.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
)
EHLO_PLAIN = b"250-mail.test\r\n250 ENHANCEDSTATUSCODES\r\n"
OK_MAIL = b"250 2.1.0 Ok\r\n"
OK_RCPT = b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 4XyZ\r\n"
BYE = b"221 2.0.0 Bye\r\n"


def module(base: str = "smtp_full", **changes: Any) -> ModuleConfig:
    return dataclasses.replace(BUILTIN_MODULES[base], **{"ehlo": "probe.test", **changes})


def message_for(mod: ModuleConfig) -> bytes | None:
    """The DATA payload the engine would build for `mod` (probe/engine.py)."""
    if mod.transaction is not Transaction.MESSAGE:
        return None
    return build_message(
        mail_from=mod.mail_from,
        rcpt_to=mod.rcpt_to,
        subject=mod.message.subject,
        body=mod.message.body,
        headers=mod.message.headers,
        domain="probe.test",
        token=Token("wire", 0, "smtp-exporter.0123456789abcdef"),
    )


class Wire:
    """One conversation: `start()` runs it up to the first command after the greeting."""

    def __init__(self, mod: ModuleConfig, *, message: bytes | None = None) -> None:
        self.message = message if message is not None else message_for(mod)
        self.session = ClientSession(mod, ehlo_name="probe.test", timeout=5.0, message=self.message)
        self.clock = 0.0
        self.writes: list[tuple[float, bytes]] = []  # (time, chunk) of each write
        self._outcome: Outcome | None = None

    def tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def start(self, ehlo: bytes = EHLO_ALL) -> Wire:
        session = self.session
        session.connecting()
        session.connection_made(self.tick(), self.tick())
        if session.status is Status.TLS:  # implicit TLS
            self.handshake()
        self.feed(BANNER)
        assert self.last == b"EHLO probe.test\r\n"
        self.feed(ehlo)
        return self

    def handshake(self) -> None:
        self.session.tls_established(self.tick(), self.tick())
        self.flush()

    def feed(self, *chunks: bytes) -> None:
        """Each chunk is one `data_received`; the session's output is written after the last."""
        for chunk in chunks:
            self.session.data_received(chunk, self.tick())
        self.flush()

    def flush(self) -> None:
        if self.session.has_output:
            at = self.tick()
            self.writes.append((at, self.session.bytes_to_send(at)))

    @property
    def last(self) -> bytes:
        return self.writes[-1][1] if self.writes else b""

    @property
    def last_time(self) -> float:
        return self.writes[-1][0]

    def sent(self) -> bytes:
        return b"".join(chunk for _, chunk in self.writes)

    def close(self) -> None:
        self.session.connection_lost(self.tick())

    def outcome(self) -> Outcome:
        """The outcome, once the session is done (read once, as the engine does)."""
        assert self.session.status is Status.DONE, self.session.status
        if self._outcome is None:
            self._outcome = self.session.outcome(self.tick())
        return self._outcome

    def durations(self) -> dict[str, float]:
        return {p.phase.value: p.duration_seconds for p in self.outcome().phases}

    def failure(self) -> tuple[Phase, str] | None:
        failure = self.outcome().failure
        return None if failure is None else (failure.phase, failure.reason.value)

    def client_lines(self) -> list[str]:
        """What the transcript says the client sent, a line each."""
        lines = []
        for _, direction, what in self.outcome().events:
            if direction == "C":
                text = what.decode() if isinstance(what, bytes) else str(what)
                lines.append(text.removesuffix("\r\n"))
        return lines

    def notes(self) -> list[str]:
        return [str(what) for _, direction, what in self.outcome().events if direction == "*"]
