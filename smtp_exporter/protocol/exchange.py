"""The mechanics under the SMTP session: commands queued and sent, replies matched to them in
order, phase durations from the times passed in, and the bounded transcript.

`Exchange` knows nothing of SMTP's rules; `ClientSession` (protocol/session.py) builds on it.
Commands go through a queue: `bytes_to_send` hands out every command queued since the last
call as one chunk, and each reply answers the oldest command sent and not yet answered. Each
command waits for the previous reply, except a PIPELINING (RFC 2920) batch: the mail
transaction (protocol/transaction.py) queues MAIL, every RCPT and DATA at once.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from smtp_exporter.model import (
    Failure,
    Phase,
    PhaseResult,
    ServerInfo,
    TranscriptEvent,
    make_phase,
    round_to_ns,
)
from smtp_exporter.protocol.reply import Reply, ReplyParser

MAX_TRANSCRIPT_EVENTS = 200

# What a reply to a command means: a function of the session class (session, command, reply,
# time), not a bound method, so that queued commands do not hold their session in a reference
# cycle (a probe's objects are freed by reference counting alone).
Handler = Callable[[Any, "Command", Reply, float], None]


class Status(enum.Enum):
    """What the session waits for; the driver acts on TLS, CLOSING and DONE."""

    CONNECTING = "connecting"  # name resolution and connect, done by the driver
    TLS = "tls"  # the driver is to start TLS now (implicit TLS, or STARTTLS accepted)
    TALKING = "talking"  # commands and their replies
    CLOSING = "closing"  # failed: a last QUIT is out, its reply only noted (the driver bounds the wait)
    DONE = "done"


# The members as module constants for the checks made on every reply and every write: on
# Python 3.11 each `Status.X` goes through the attribute hook of enum's metaclass (about 900
# instructions under callgrind), where a module constant is one cached global load.
CONNECTING = Status.CONNECTING
TLS = Status.TLS
TALKING = Status.TALKING
CLOSING = Status.CLOSING
DONE = Status.DONE


class Outcome(NamedTuple):
    phases: tuple[PhaseResult, ...]
    events: list[TranscriptEvent]
    failure: Failure | None
    server: ServerInfo
    pipelined: bool = False


class Command:
    """A command line queued or sent, and what its reply means."""

    __slots__ = ("expected", "line", "on_reply", "phase", "shown")

    def __init__(
        self,
        phase: Phase,
        line: bytes,
        on_reply: Handler,
        *,
        expected: tuple[int, ...] = (),
        shown: str | None = None,
    ) -> None:
        self.phase = phase
        self.line = line
        self.on_reply = on_reply
        self.expected = expected  # for a transaction step: the codes that let the next one go
        self.shown = shown  # what the transcript says was sent, when not the line itself


class Exchange:
    """Queued and awaited commands, phases and transcript of one connection."""

    def __init__(self) -> None:
        self.status = CONNECTING
        self.phase = Phase.RESOLVE  # where the conversation is: the phase a timeout fails
        self.failure: Failure | None = None
        self.phases: list[PhaseResult] = []
        self.events: list[TranscriptEvent] = []
        self._parser = ReplyParser()
        self._outbox: list[Command] = []  # queued, not yet handed to the driver
        self._awaiting: deque[Command] = deque()  # sent, reply not yet received
        self._started = 0.0  # when the phase under way began (its first command was sent)
        self._sent_phase: Phase | None = None
        self._now = 0.0  # the time of the input being handled

    def note(self, at: float, text: str) -> None:
        """A transcript event of the driver's own (connecting to..., TLS facts, skipped MX)."""
        self._note(at, "*", text)

    @property
    def has_output(self) -> bool:
        return bool(self._outbox)

    def bytes_to_send(self, at: float) -> bytes:
        """Every command queued, as one chunk; `at` is when the driver writes it."""
        outbox = self._outbox
        if not outbox:
            return b""
        for command in outbox:
            if command.phase is not self._sent_phase:
                self._started = at
                self._sent_phase = command.phase
            self._note(at, "C", command.line if command.shown is None else command.shown)
            self._awaiting.append(command)
        self.phase = outbox[-1].phase
        data = outbox[0].line if len(outbox) == 1 else b"".join(c.line for c in outbox)
        outbox.clear()
        if self.status is CLOSING and self._parser.broken:
            self.status = DONE  # no reply can be read any more
        return data

    def _note(self, at: float, direction: str, what: str | bytes | Reply) -> None:
        if len(self.events) < MAX_TRANSCRIPT_EVENTS:
            self.events.append((at, direction, what))

    def _record(self, phase: Phase, reply: Reply, ended: float, started: float | None = None) -> None:
        """The phase under way, ended by `reply`: from its first command sent (or `started`)."""
        begun = self._started if started is None else started
        self.phases.append(make_phase((phase, round_to_ns(ended - begun), reply.code, reply.summary_text)))

    def _current_phase(self) -> Phase:
        return self._awaiting[0].phase if self._awaiting else self.phase

    def _send(self, phase: Phase, line: bytes, on_reply: Handler, *, shown: str | None = None) -> None:
        self._outbox.append(Command(phase, line, on_reply, shown=shown))
