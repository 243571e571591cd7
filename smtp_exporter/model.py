"""What one probe measured: the typed result every other part of the exporter renders.

Phase and failure-reason names are part of the public contract: they become label values
(`phase`, `reason`) and JSON values, so they must never be renamed.
"""

from __future__ import annotations

import enum
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, overload


class Phase(enum.StrEnum):
    """The steps of an SMTP conversation, in the order they can happen."""

    RESOLVE = "resolve"
    CONNECT = "connect"
    TLS = "tls"
    BANNER = "banner"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    EHLO_TLS = "ehlo_tls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    MESSAGE = "message"
    RSET = "rset"
    QUIT = "quit"
    # The delivery check (a module with `delivery`), after the SMTP conversation.
    IMAP_CONNECT = "imap_connect"
    IMAP_TLS = "imap_tls"
    IMAP_LOGIN = "imap_login"
    IMAP_SELECT = "imap_select"
    DELIVERY = "delivery"  # from the 250 after the message to the moment it is in the mailbox
    IMAP_FETCH = "imap_fetch"
    IMAP_LOGOUT = "imap_logout"


class FailureReason(enum.StrEnum):
    """Why a probe failed: a closed set, documented in the README."""

    DNS_ERROR = "dns_error"
    DNS_NXDOMAIN = "dns_nxdomain"
    NULL_MX = "null_mx"
    CONNECT_REFUSED = "connect_refused"
    NETWORK_UNREACHABLE = "network_unreachable"
    TIMEOUT = "timeout"
    CONNECTION_CLOSED = "connection_closed"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    TLS_CERT_INVALID = "tls_cert_invalid"
    STARTTLS_NOT_OFFERED = "starttls_not_offered"
    REPLY_TEMPORARY = "reply_temporary"
    REPLY_PERMANENT = "reply_permanent"
    UNEXPECTED_REPLY = "unexpected_reply"
    PROTOCOL_ERROR = "protocol_error"
    AUTH_FAILED = "auth_failed"
    EXPECTATION_FAILED = "expectation_failed"
    LOCAL_ERROR = "local_error"  # the exporter's own side: no file descriptor, an unbindable source, ...
    NOT_DELIVERED = "not_delivered"  # the probe message did not appear within delivery.timeout
    IMAP_ERROR = "imap_error"  # a NO or BAD reply where the IMAP phase needs OK


class Transaction(enum.StrEnum):
    """How far a module's conversation goes."""

    NONE = "none"
    ENVELOPE = "envelope"
    MESSAGE = "message"


def round_to_ns(seconds: float) -> float:
    """A measured interval in whole nanoseconds, the resolution of the clock it was read from.

    The float then has a short exact decimal form (0.000667196, not 0.000667195999994874), which
    is what the exposition prints: shorter text, and cheaper to print, for every duration of
    every probe.
    """
    return round(seconds * 1e9) / 1e9


# RFC 3463 2: class "." subject "." detail, the subject and detail of one to three digits; the
# code is the reply text's first word.
_ENHANCED_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}(?= |\Z)").match


def enhanced_status_code(text: str) -> str | None:
    """The RFC 3463 enhanced status code (`2.1.0`) that starts a reply's text, if any."""
    found = _ENHANCED_STATUS(text)
    return None if found is None else found[0]


class PhaseResult(NamedTuple):
    """One phase of the conversation: how long it took and what the server answered.

    `reply_code` is None for phases without a reply (resolve, connect, tls). For a phase
    made of several commands (several RCPT TO, AUTH LOGIN's steps) the duration covers
    them all and the reply is the last one, or the first that failed. A named tuple rather
    than a frozen dataclass: a probe makes up to a dozen, and tuples are the cheaper to build.
    """

    phase: Phase
    duration_seconds: float
    reply_code: int | None = None
    reply: str | None = None  # the reply's text on one line, capped, without the code

    @property
    def enhanced_status(self) -> str | None:
        """Read from the reply's text when asked, not kept beside it: every kept result would
        hold its own copy of "2.1.0" and the like (docs/architecture.md). Only an SMTP reply
        has one: the delivery check's IMAP phases show a reply's text without a code."""
        return None if self.reply is None or self.reply_code is None else enhanced_status_code(self.reply)


# A phase from its four fields, built in C: PhaseResult(...) and PhaseResult._make are Python
# functions on 3.11, and the session builds a phase for every reply (docs/architecture.md).
make_phase = partial(tuple.__new__, PhaseResult)


class PackedPhases(Sequence[PhaseResult]):
    """The phases of a result a series keeps, packed: the durations as machine doubles, the
    phase names, reply codes and texts as they came (the parser's objects, shared, not copies).
    Read as `PhaseResult`s, made when asked. Every series keeps its latest result until its next
    probe, and packed its phases cost ~40% less (docs/architecture.md). Packing and reading are
    C calls only (no Python-level loop), since every successful probe packs."""

    __slots__ = ("_codes", "_durations", "_names", "_replies")

    def __init__(self, phases: Sequence[PhaseResult]) -> None:
        names, durations, codes, replies = zip(*phases, strict=True) if phases else ((), (), (), ())
        self._names: tuple[Phase, ...] = names
        self._durations = array("d", durations)
        self._codes: tuple[int | None, ...] = codes
        self._replies: tuple[str | None, ...] = replies

    @overload
    def __getitem__(self, i: int) -> PhaseResult: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[PhaseResult, ...]: ...
    def __getitem__(self, i: int | slice) -> PhaseResult | tuple[PhaseResult, ...]:
        if isinstance(i, slice):
            return tuple(self)[i]
        return make_phase((self._names[i], self._durations[i], self._codes[i], self._replies[i]))

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[PhaseResult]:
        return map(
            make_phase,
            zip(self._names, self._durations, self._codes, self._replies, strict=True),
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PackedPhases, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PackedPhases({tuple(self)!r})"


@dataclass(frozen=True, slots=True)
class Failure:
    phase: Phase
    reason: FailureReason
    message: str


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """TLS facts of the session, reported even when certificate verification failed."""

    version: str
    cipher: str
    verified: bool
    verify_error: str | None
    cert_not_before_timestamp: float | None
    cert_not_after_timestamp: float | None
    subject: str | None
    issuer: str | None
    sans: tuple[str, ...]
    fingerprint_sha256: str | None
    # For the blackbox_exporter-compatible series (metrics/blackbox.py): the leaf's DNS names
    # and its names as Go spells them (probe/x509_names.py), the earliest expiry over the whole
    # chain the server presented, and over the chain verification built (its trust anchor
    # included, as Go's VerifiedChains), or over the presented one when it did not verify.
    dns_names: tuple[str, ...] = ()
    subject_dn: str | None = None
    issuer_dn: str | None = None
    chain_not_after_timestamp: float | None = None
    last_chain_not_after_timestamp: float | None = None
    # Every certificate the server presented (DER, leaf first), for the posture checks that judge
    # it (MTA-STS); dropped once they ran, so that no kept result holds certificates.
    chain: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def earliest_not_after_timestamp(self) -> float | None:
        """When the first certificate the server presented expires (an intermediate that expires
        before the leaf breaks delivery first): what the status page and the Nagios output count
        days to. The leaf's when the chain is unknown."""
        chain = self.chain_not_after_timestamp
        return self.cert_not_after_timestamp if chain is None else chain


@dataclass(frozen=True, slots=True)
class ServerInfo:
    banner: str | None = None
    ehlo_hostname: str | None = None
    # EHLO keyword (upper case) -> its parameters, e.g. {"SIZE": ("10240000",)}.
    extensions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def max_message_size(self) -> int | None:
        for keyword, params in self.extensions:  # rendered at every probe: no dict built
            if keyword == "SIZE":
                if params and params[0].isascii() and params[0].isdigit():
                    return int(params[0])
                return None
        return None


@dataclass(frozen=True, slots=True)
class AddressInfo:
    ip: str
    port: int
    family: int  # 4 or 6


@dataclass(frozen=True, slots=True)
class MXInfo:
    host: str
    preference: int


class AttemptOutcome(enum.StrEnum):
    CONNECTED = "connected"  # the connection the probe's result comes from
    FAILED = "failed"  # the connect failed, or the greeting or EHLO made the probe move on
    CANCELLED = "cancelled"  # still connecting when another attempt won


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connect attempt of a probe, in the order they were started."""

    mx_host: str | None  # None unless the target is a mail domain (mx: true)
    address: str
    family: int  # 4 or 6
    outcome: AttemptOutcome
    phase: Phase | None  # where it failed: connect, or banner / ehlo when it moved the probe on
    reason: FailureReason | None
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """The delivery check's findings: the message it sent and found, and what its headers say."""

    message_id: str
    token: str
    duration_seconds: float | None  # None: not found
    hops: int | None = None  # Received: headers
    received_span_seconds: float | None = None  # the oldest Received date to the newest
    authentication_results: tuple[tuple[str, str], ...] = ()  # method -> result
    cleaned_up: int = 0  # messages expunged, leftovers included


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One line of the conversation: `direction` is "C" (client), "S" (server) or "*" (event)."""

    offset_seconds: float
    direction: str
    text: str


# One raw transcript event: (perf_counter time, direction, what). `what` is text, a command
# line as bytes (CRLF included), or a reply as (code, lines).
TranscriptEvent = tuple[float, str, "str | bytes | tuple[int, tuple[str, ...]]"]


class Transcript:
    """Who said what, kept compact and expanded into lines only when read: most results are
    rendered as metrics and never shown as text, though the result history keeps many of them.

    The events are kept as three flat, untracked containers rather than a list of tuples (one
    packed `bytes` of times, one `str` of directions, a tuple of what was said), and what was
    said is mostly shared: command lines and replies are the same objects at every probe.
    """

    __slots__ = ("_directions", "_lines", "_said", "_t0", "_times")

    def __init__(self, events: list[TranscriptEvent] | None = None, t0: float = 0.0) -> None:
        times, directions, said = zip(*events, strict=True) if events else ((), (), ())
        self._times = array("d", times).tobytes()
        self._directions = "".join(directions)
        self._said: tuple[str | bytes | tuple[int, tuple[str, ...]], ...] = said
        self._t0 = t0
        self._lines: tuple[TranscriptLine, ...] | None = None

    def lines(self) -> tuple[TranscriptLine, ...]:
        if self._lines is None:
            out: list[TranscriptLine] = []
            times = array("d", self._times)
            for at, direction, what in zip(times, self._directions, self._said, strict=True):
                offset = at - self._t0
                if isinstance(what, str):
                    out.append(TranscriptLine(offset, direction, what))
                elif isinstance(what, bytes):
                    out.append(TranscriptLine(offset, direction, what[:-2].decode("utf-8", "replace")))
                else:
                    code, texts = what
                    last = len(texts) - 1
                    out += [
                        TranscriptLine(offset, direction, f"{code}{' ' if i == last else '-'}{text}")
                        for i, text in enumerate(texts)
                    ]
            self._lines = tuple(out)
        return self._lines

    def __iter__(self) -> Iterator[TranscriptLine]:
        return iter(self.lines())

    def __len__(self) -> int:
        return len(self.lines())

    def __repr__(self) -> str:
        return f"Transcript({len(self._said)} events)"

    def followed_by(self, other: Transcript) -> Transcript:
        """This transcript, then `other` (whose times are on the same clock), with offsets from
        this one's start: the two probes of an `ip_protocol: both` result as one."""
        joined = Transcript(None, self._t0)
        joined._times = self._times + other._times
        joined._directions = self._directions + other._directions
        joined._said = self._said + other._said
        return joined


def fell_back(success: bool, attempts: tuple[Attempt, ...]) -> bool:
    """Whether a probe succeeded on another candidate than its first because the first failed."""
    return success and len(attempts) > 1 and attempts[0].outcome is AttemptOutcome.FAILED


# One posture sample: (metric name, the sample's own labels rendered as `name="value",...`, value).
PostureSample = tuple[str, str, float]


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The latest run of one posture check (smtp_exporter/posture/): reported with every probe of
    its series until the check runs again. Samples name their family by metric name, since the
    families are the metrics package's and this module is below it."""

    check: str  # the `check` label: mx_hygiene, dane, ...
    ran_at: float  # Unix time at which it ran
    samples: tuple[PostureSample, ...]
    reasons: tuple[str, ...]  # what it found, in words
    details: tuple[tuple[str, object], ...] = ()  # JSON-ready facts, for the `posture` section


NO_TRANSCRIPT = Transcript()  # for results kept without their transcript


# Not frozen, unlike the records it holds: a frozen dataclass sets each field through
# object.__setattr__, and a ProbeResult, built twice for every successful probe (`kept`), took
# 2.5 us to build against 0.3 us. Nothing changes a result once made.
@dataclass(slots=True)
class ProbeResult:
    target: str
    module: str
    success: bool
    start_timestamp: float
    duration_seconds: float
    phases: Sequence[PhaseResult]  # a tuple, or PackedPhases in a result a series keeps
    failure: Failure | None
    tls: TLSInfo | None = None
    server: ServerInfo = field(default_factory=ServerInfo)
    address: AddressInfo | None = None
    mx: MXInfo | None = None
    transcript: Transcript = field(default_factory=Transcript)
    attempts: tuple[Attempt, ...] = ()
    # Succeeded on another candidate than the first, because the first failed (not merely because
    # it was slower and got cancelled): see `fell_back`. Kept, not derived from `attempts`, since
    # an `ip_protocol: both` result joins two probes' attempts, each with its own first candidate.
    fallback: bool = False
    posture: tuple[CheckReport, ...] = ()  # the module's posture checks, fresh or kept
    delivery: DeliveryInfo | None = None  # a module with `delivery` whose SMTP part succeeded
    pipelined: bool = False  # MAIL, RCPT and DATA went out in one write (RFC 2920)

    def kept(self) -> ProbeResult:
        """This result as a series keeps a success: without its transcript (the result history
        has it) and with its phases packed. Every field is passed here: built directly, since
        dataclasses.replace, looking each field up by name, would cost more than twice as much
        on every successful probe."""
        return ProbeResult(
            self.target,
            self.module,
            self.success,
            self.start_timestamp,
            self.duration_seconds,
            PackedPhases(self.phases),
            self.failure,
            self.tls,
            self.server,
            self.address,
            self.mx,
            NO_TRANSCRIPT,
            self.attempts,
            self.fallback,
            self.posture,
            self.delivery,
            self.pipelined,
        )

    def phase(self, phase: Phase) -> PhaseResult | None:
        for result in self.phases:
            if result.phase is phase:
                return result
        return None
