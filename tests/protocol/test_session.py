"""ClientSession in memory: server bytes in, client bytes, phases and the failure out.

No sockets and no clock: times are a counter that ticks at every input, so durations and the
transcript's order are exact. The real-peer suites (tests/probe, tests/hostile) check the
same rules through the asyncio driver.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.schema import (
    AuthConfig,
    AuthMechanism,
    ExpectConfig,
    ModuleConfig,
    Secret,
    StartTLS,
)
from smtp_exporter.model import FailureReason, Phase, Transaction
from smtp_exporter.protocol import ClientSession, Outcome, Status
from smtp_exporter.protocol.auth import REDACTED
from smtp_exporter.protocol.exchange import MAX_TRANSCRIPT_EVENTS

BANNER = b"220 mail.test ESMTP\r\n"
EHLO = b"250-mail.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
EHLO_STARTTLS = b"250-mail.test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
EHLO_AUTH = b"250-mail.test\r\n250-AUTH LOGIN PLAIN CRAM-MD5\r\n250 SIZE 2000\r\n"
REPLIES: Mapping[str, bytes] = {
    "EHLO": EHLO,
    "HELO": b"250 mail.test\r\n",
    "STARTTLS": b"220 2.0.0 Ready\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 go ahead\r\n",
    ".": b"250 2.0.0 queued\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
    "AUTH": b"235 2.7.0 ok\r\n",
    "*": b"501 5.0.0 cancelled\r\n",
}
USER, PASSWORD = "probe-user", "s3cret-pass"
MESSAGE = b"Subject: x\r\n\r\nhello\r\n.\r\n"


def module(base: str = "smtp_handshake", **changes: Any) -> ModuleConfig:
    return dataclasses.replace(BUILTIN_MODULES[base], **{"ehlo": "probe.test", **changes})


def auth(mechanism: AuthMechanism = AuthMechanism.AUTO) -> AuthConfig:
    return AuthConfig(mechanism=mechanism, username=USER, password=Secret(PASSWORD))


class Peer:
    """Plays the server: answers each command the session sends from `replies` (by verb; "." for
    the message; a callable gets the line), in one chunk per command or all bytes at once."""

    def __init__(self, mod: ModuleConfig, replies: Mapping[str, Any] | None = None, *, tls: bool = True):
        self.session = ClientSession(mod, ehlo_name="probe.test", timeout=5.0, message=MESSAGE)
        self.replies = {**REPLIES, **(replies or {})}
        self.clock = 0.0
        self.sent: list[bytes] = []  # each chunk the session asked to write
        self.tls = tls  # whether a TLS handshake requested by the session succeeds
        self.tls_done = False

    def tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def feed(self, data: bytes) -> None:
        self.session.data_received(data, self.tick())
        self.flush()

    def flush(self) -> None:
        if self.session.has_output:
            self.sent.append(self.session.bytes_to_send(self.tick()))

    def lines(self) -> list[bytes]:
        return [line + b"\n" for chunk in self.sent for line in chunk.split(b"\n")[:-1]]

    def run(self, banner: bytes | None = BANNER, *, close_after: int | None = None) -> Outcome:
        """Converse until the session is done or waits for what never comes; the outcome is read
        only when it is done (`outcome()` is called once, at the end)."""
        session = self.session
        session.connecting()
        session.connection_made(self.tick(), self.tick())
        if session.status is Status.TLS:
            self.handshake()
        if banner is not None:
            self.feed(banner)
        answered = 0
        while session.status in (Status.TALKING, Status.CLOSING, Status.TLS):
            if session.status is Status.TLS:
                self.handshake()
                continue
            if answered == len(self.sent):
                break  # nothing left to answer: the session waits (a deadline would end it)
            if close_after is not None and answered >= close_after:
                session.connection_lost(self.tick())
                break
            chunk = self.sent[answered]
            answered += 1
            self.feed(self.answer(chunk))
        return session.outcome(self.tick()) if session.status is Status.DONE else None  # type: ignore[return-value]

    def answer(self, chunk: bytes) -> bytes:
        previous = self.sent[-2] if len(self.sent) > 1 else b""
        verb = "." if previous == b"DATA\r\n" else chunk.split(b" ", 1)[0].strip().decode().upper()
        if self.session.phase is Phase.AUTH and verb not in ("AUTH", "*"):
            verb = "AUTH-STEP"
        reply = self.replies.get(verb, b"502 5.5.2 what\r\n")
        return reply(self) if callable(reply) else reply

    def handshake(self) -> None:
        if self.tls:
            self.tls_done = True
            self.session.tls_established(self.tick(), self.tick())
            self.flush()
        else:
            self.session.fail(self.tick(), FailureReason.TLS_HANDSHAKE_FAILED, "TLS handshake failed: no")


def _ehlo_by_tls(peer: Peer) -> bytes:
    return EHLO_AUTH if peer.tls_done else EHLO_STARTTLS


def names(outcome: Outcome) -> list[str]:
    return [p.phase.value for p in outcome.phases]


def failure(outcome: Outcome) -> tuple[Phase, FailureReason] | None:
    return None if outcome.failure is None else (outcome.failure.phase, outcome.failure.reason)


FULL = module("smtp_full", rcpt_to=("a@x.test", "b@x.test"))
P, R = Phase, FailureReason

# name: (module, replies, expected failure or None, expected phases)
CASES: dict[str, tuple[ModuleConfig, dict[str, Any], tuple[Phase, FailureReason] | None, list[str]]] = {
    "handshake": (module(), {}, None, ["connect", "banner", "ehlo", "quit"]),
    "full": (FULL, {}, None, ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message", "quit"]),
    "envelope": (
        module("smtp_full", transaction=Transaction.ENVELOPE),
        {},
        None,
        ["connect", "banner", "ehlo", "mail", "rcpt", "rset", "quit"],
    ),
    "banner_421": (
        module(),
        {"banner": b"421 4.3.2 busy\r\n"},
        (P.BANNER, R.REPLY_TEMPORARY),
        ["connect", "banner"],
    ),
    "banner_250": (
        module(),
        {"banner": b"250 hello\r\n"},
        (P.BANNER, R.UNEXPECTED_REPLY),
        ["connect", "banner"],
    ),
    "banner_regex": (
        module(expect=ExpectConfig(banner="Postfix")),
        {},
        (P.BANNER, R.EXPECTATION_FAILED),
        ["connect", "banner"],
    ),
    "helo_fallback": (
        module(),
        {"EHLO": b"502 5.5.1 no\r\n"},
        None,
        ["connect", "banner", "ehlo", "helo", "quit"],
    ),
    "no_helo_fallback": (
        module(helo_fallback=False),
        {"EHLO": b"502 5.5.1 no\r\n"},
        (P.EHLO, R.REPLY_PERMANENT),
        ["connect", "banner", "ehlo"],
    ),
    "ehlo_4xx_no_fallback": (
        module(),
        {"EHLO": b"451 4.3.0 later\r\n"},
        (P.EHLO, R.REPLY_TEMPORARY),
        ["connect", "banner", "ehlo"],
    ),
    "helo_refused": (
        module(),
        {"EHLO": b"502 no\r\n", "HELO": b"502 no\r\n"},
        (P.HELO, R.REPLY_PERMANENT),
        ["connect", "banner", "ehlo", "helo"],
    ),
    "starttls": (
        module(),
        {"EHLO": EHLO_STARTTLS},
        None,
        ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"],
    ),
    "starttls_refused": (
        module(),
        {"EHLO": EHLO_STARTTLS, "STARTTLS": b"454 4.7.0 no TLS\r\n"},
        (P.STARTTLS, R.REPLY_TEMPORARY),
        ["connect", "banner", "ehlo", "starttls"],
    ),
    "starttls_required_not_offered": (
        module(starttls=StartTLS.REQUIRED),
        {},
        (P.STARTTLS, R.STARTTLS_NOT_OFFERED),
        ["connect", "banner", "ehlo"],
    ),
    "starttls_required_after_helo": (
        module(starttls=StartTLS.REQUIRED),
        {"EHLO": b"500 no\r\n"},
        (P.STARTTLS, R.STARTTLS_NOT_OFFERED),
        ["connect", "banner", "ehlo", "helo"],
    ),
    "starttls_never": (
        module(starttls=StartTLS.NEVER),
        {"EHLO": EHLO_STARTTLS},
        None,
        ["connect", "banner", "ehlo", "quit"],
    ),
    "implicit_tls": (
        module("smtps_handshake"),
        {},
        None,
        ["connect", "tls", "banner", "ehlo", "quit"],
    ),
    "extensions_missing": (
        module(expect=ExpectConfig(extensions=("SIZE", "DSN", "CHUNKING"))),
        {},
        (P.EHLO, R.EXPECTATION_FAILED),
        ["connect", "banner", "ehlo"],
    ),
    "extensions_after_tls": (
        module(expect=ExpectConfig(extensions=("AUTH",))),
        {"EHLO": _ehlo_by_tls},
        None,
        ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"],
    ),
    "rcpt_refused": (
        FULL,
        {"RCPT": b"550 5.1.1 unknown\r\n"},
        (P.RCPT, R.REPLY_PERMANENT),
        ["connect", "banner", "ehlo", "mail", "rcpt"],
    ),
    "rcpt_251": (
        FULL,
        {"RCPT": b"251 2.1.5 forwarded\r\n"},
        None,
        ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message", "quit"],
    ),
    "mail_354": (
        FULL,
        {"MAIL": b"354 go\r\n"},
        (P.MAIL, R.UNEXPECTED_REPLY),
        ["connect", "banner", "ehlo", "mail"],
    ),
    "data_250": (
        FULL,
        {"DATA": b"250 ok\r\n"},
        (P.DATA, R.UNEXPECTED_REPLY),
        ["connect", "banner", "ehlo", "mail", "rcpt", "data"],
    ),
    "message_421": (
        FULL,
        {".": b"421 4.3.0 bye\r\n"},
        (P.MESSAGE, R.REPLY_TEMPORARY),
        ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message"],
    ),
    "rcpt_650": (
        FULL,
        {"RCPT": b"650 6.1.1 what\r\n"},
        (P.RCPT, R.UNEXPECTED_REPLY),
        ["connect", "banner", "ehlo", "mail", "rcpt"],
    ),
    "quit_250_is_fine": (module(), {"QUIT": b"250 ok\r\n"}, None, ["connect", "banner", "ehlo", "quit"]),
    "quit_250_fail_on_quit": (
        module(fail_on_quit=True),
        {"QUIT": b"250 ok\r\n"},
        (P.QUIT, R.UNEXPECTED_REPLY),
        ["connect", "banner", "ehlo", "quit"],
    ),
    "quit_421_fail_on_quit": (
        module(fail_on_quit=True),
        {"QUIT": b"421 4.0.0 bye\r\n"},
        (P.QUIT, R.REPLY_TEMPORARY),
        ["connect", "banner", "ehlo", "quit"],
    ),
    "garbage_banner": (
        module(),
        {"banner": b"SSH-2.0-OpenSSH\r\n"},
        (P.BANNER, R.UNEXPECTED_REPLY),
        ["connect"],
    ),
    "nul_in_ehlo": (
        module(),
        {"EHLO": b"250-mail.test\r\n250-SI\x00ZE\r\n250 OK\r\n"},
        (P.EHLO, R.PROTOCOL_ERROR),
        ["connect", "banner"],
    ),
    "continuation_code_changes": (
        module(),
        {"EHLO": b"250-mail.test\r\n251 SIZE\r\n"},
        (P.EHLO, R.PROTOCOL_ERROR),
        ["connect", "banner"],
    ),
    "reply_before_ehlo": (
        module(),
        {"banner": BANNER + b"250 2.0.0 unsolicited\r\n"},
        (P.EHLO, R.PROTOCOL_ERROR),
        ["connect", "banner"],
    ),
    "reply_to_nothing_before_mail": (
        FULL,
        {"EHLO": EHLO + b"250 2.0.0 another\r\n"},
        (P.MAIL, R.PROTOCOL_ERROR),
        ["connect", "banner", "ehlo"],
    ),
    "reply_to_nothing_in_transaction": (
        FULL,
        {"MAIL": b"250 2.1.0 Ok\r\n250 2.0.0 another\r\n"},
        (P.RCPT, R.PROTOCOL_ERROR),
        ["connect", "banner", "ehlo", "mail"],
    ),
    "reply_to_nothing_before_quit_is_noted": (
        module(),
        {"EHLO": EHLO + b"250 2.0.0 another\r\n"},
        None,
        ["connect", "banner", "ehlo"],
    ),
    "reply_to_nothing_before_quit_fail_on_quit": (
        module(fail_on_quit=True),
        {"EHLO": EHLO + b"250 2.0.0 another\r\n"},
        (P.QUIT, R.PROTOCOL_ERROR),
        ["connect", "banner", "ehlo"],
    ),
    "garbage_after_ehlo_reply": (
        module(),
        {"EHLO": EHLO + b"GET / HTTP/1.1\r\n"},
        (P.EHLO, R.UNEXPECTED_REPLY),
        ["connect", "banner"],
    ),
    "starttls_injection": (
        module(),
        {"EHLO": EHLO_STARTTLS, "STARTTLS": b"220 2.0.0 Ready\r\n250 injected\r\n"},
        (P.STARTTLS, R.PROTOCOL_ERROR),
        ["connect", "banner", "ehlo", "starttls"],
    ),
    "starttls_injection_partial": (
        module(),
        {"EHLO": EHLO_STARTTLS, "STARTTLS": b"220 2.0.0 Ready\r\n250 inj"},
        (P.STARTTLS, R.PROTOCOL_ERROR),
        ["connect", "banner", "ehlo", "starttls"],
    ),
    "auth_auto_cram_md5": (
        module("submission", auth=auth(), expect=ExpectConfig(extensions=("AUTH",))),
        {"EHLO": _ehlo_by_tls},
        None,
        ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "auth", "quit"],
    ),
    "auth_none_offered": (
        module(auth=auth()),
        {},
        (P.AUTH, R.AUTH_FAILED),
        ["connect", "banner", "ehlo"],
    ),
    "auth_refused": (
        module(auth=auth(AuthMechanism.PLAIN)),
        {"EHLO": EHLO_AUTH, "AUTH": b"535 5.7.8 no\r\n"},
        (P.AUTH, R.AUTH_FAILED),
        ["connect", "banner", "ehlo", "auth"],
    ),
    "auth_temporary": (
        module(auth=auth(AuthMechanism.PLAIN)),
        {"EHLO": EHLO_AUTH, "AUTH": b"454 4.7.0 later\r\n"},
        (P.AUTH, R.REPLY_TEMPORARY),
        ["connect", "banner", "ehlo", "auth"],
    ),
    "auth_login_asks_forever": (
        module(auth=auth(AuthMechanism.LOGIN)),
        {"EHLO": EHLO_AUTH, "AUTH": b"334 VXNlcm5hbWU6\r\n", "AUTH-STEP": b"334 UGFzc3dvcmQ6\r\n"},
        (P.AUTH, R.AUTH_FAILED),
        ["connect", "banner", "ehlo", "auth"],
    ),
    "auth_cram_md5_bad_challenge": (
        module(auth=auth(AuthMechanism.CRAM_MD5)),
        {"EHLO": EHLO_AUTH, "AUTH": b"334 !!!not base64!!!\r\n"},
        (P.AUTH, R.PROTOCOL_ERROR),
        ["connect", "banner", "ehlo"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_conversation(case: str) -> None:
    mod, replies, expected, phases = CASES[case]
    banner = replies.pop("banner", BANNER) if "banner" in replies else BANNER
    peer = Peer(mod, replies)
    outcome = peer.run(banner)
    assert failure(outcome) == expected, outcome.failure
    assert names(outcome) == phases
    assert peer.session.status is Status.DONE
    # Every command ends with CRLF; durations are those of the clock passed in.
    assert all(line.endswith(b"\r\n") for line in peer.lines())
    assert all(p.duration_seconds >= 0 for p in outcome.phases)
    times = [event[0] for event in outcome.events]
    assert times == sorted(times)
    if expected is not None:
        last = outcome.events[-1]
        assert last[1] == "*" and str(last[2]).startswith(f"probe failed in {expected[0].value}: ")


def test_full_transaction_sends_what_it_should() -> None:
    peer = Peer(FULL)
    outcome = peer.run()
    assert outcome.failure is None
    assert peer.sent == [
        b"EHLO probe.test\r\n",
        b"MAIL FROM:<> SIZE=21\r\n",  # the server offers SIZE: the message is declared (RFC 1870)
        b"RCPT TO:<a@x.test>\r\n",
        b"RCPT TO:<b@x.test>\r\n",
        b"DATA\r\n",
        MESSAGE,
        b"QUIT\r\n",
    ]
    shown = [what for _, direction, what in outcome.events if direction == "C"]
    assert f"<message: {len(MESSAGE)} bytes>" in shown
    # Two RCPT are one phase: from the first sent to the last reply.
    rcpt = [p for p in outcome.phases if p.phase is Phase.RCPT]
    assert len(rcpt) == 1 and rcpt[0].duration_seconds == 3.0  # sent, reply, sent, reply
    assert outcome.server.banner == "mail.test ESMTP"
    assert outcome.server.ehlo_hostname == "mail.test"
    assert dict(outcome.server.extensions)["SIZE"] == ("1000",)


def test_phase_times_come_from_the_inputs() -> None:
    session = ClientSession(module(), ehlo_name="probe.test", timeout=5.0)
    session.resolved(1.0, 1.5)
    session.connection_made(2.0, 2.25)
    session.data_received(BANNER, 3.0)
    assert session.bytes_to_send(3.5) == b"EHLO probe.test\r\n"
    session.data_received(EHLO, 4.0)
    assert session.bytes_to_send(4.125) == b"QUIT\r\n"
    session.data_received(b"221 bye\r\n", 5.0)
    outcome = session.outcome(6.0)
    assert [(p.phase.value, p.duration_seconds) for p in outcome.phases] == [
        ("resolve", 0.5),
        ("connect", 0.25),
        ("banner", 0.75),
        ("ehlo", 0.5),
        ("quit", 0.875),
    ]
    assert outcome.phases[2].reply_code == 220


def test_chunks_split_anywhere_give_the_same_conversation() -> None:
    """Replies cut at every byte: the same phases and commands as in one piece."""
    whole = Peer(FULL)
    expected = whole.run()
    session = ClientSession(FULL, ehlo_name="probe.test", timeout=5.0, message=MESSAGE)
    session.connection_made(0.0, 0.0)
    script = [BANNER, EHLO, REPLIES["MAIL"], REPLIES["RCPT"], REPLIES["RCPT"], REPLIES["DATA"], REPLIES["."]]
    sent = []
    for reply in [*script, REPLIES["QUIT"]]:
        for i in range(len(reply)):
            session.data_received(reply[i : i + 1], 1.0)
        if session.has_output:
            sent.append(session.bytes_to_send(1.0))
    outcome = session.outcome(2.0)
    assert outcome.failure is None
    assert names(outcome) == names(expected)
    assert sent == whole.sent


def test_auth_plain_is_redacted() -> None:
    quoting = {
        "AUTH": lambda peer: (
            b"535 5.7.8 bad " + peer.sent[-1].split()[-1] + b" " + PASSWORD.encode() + b"\r\n"
        )
    }
    peer = Peer(module(auth=auth(AuthMechanism.PLAIN)), {"EHLO": EHLO_AUTH, **quoting})
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    plain = base64.b64encode(f"\x00{USER}\x00{PASSWORD}".encode()).decode()
    assert peer.sent[1] == f"AUTH PLAIN {plain}\r\n".encode()
    text = repr(outcome)
    assert PASSWORD not in text and plain not in text
    assert f"AUTH PLAIN {REDACTED}" in text and REDACTED in (outcome.phases[-1].reply or "")
    # After a failure, a short QUIT.
    assert peer.sent[-1] == b"QUIT\r\n"


def test_auth_login_steps_and_cancel() -> None:
    replies = {"EHLO": EHLO_AUTH, "AUTH": b"334 VXNlcm5hbWU6\r\n", "AUTH-STEP": b"334 UGFzc3dvcmQ6\r\n"}
    peer = Peer(module(auth=auth(AuthMechanism.LOGIN)), replies)
    outcome = peer.run()
    assert failure(outcome) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    user_b64 = base64.b64encode(USER.encode())
    password_b64 = base64.b64encode(PASSWORD.encode())
    assert peer.sent[1:] == [
        b"AUTH LOGIN\r\n",
        user_b64 + b"\r\n",
        password_b64 + b"\r\n",
        b"*\r\n",
        b"QUIT\r\n",
    ]
    shown = [what for _, direction, what in outcome.events if direction == "C"]
    assert shown.count(REDACTED) == 2
    assert password_b64.decode() not in repr(outcome)


def test_auth_login_success() -> None:
    replies = {"EHLO": EHLO_AUTH, "AUTH": b"334 VXNlcm5hbWU6\r\n", "AUTH-STEP": _login_step}
    peer = Peer(module(auth=auth(AuthMechanism.LOGIN)), replies)
    outcome = peer.run()
    assert outcome.failure is None, outcome.failure
    assert names(outcome) == ["connect", "banner", "ehlo", "auth", "quit"]


def _login_step(peer: Peer) -> bytes:
    return b"334 UGFzc3dvcmQ6\r\n" if len(peer.sent) == 3 else b"235 2.7.0 ok\r\n"


def test_auth_cram_md5_answer() -> None:
    challenge = base64.b64encode(b"<1896.697170952@mail.test>")
    replies = {"EHLO": EHLO_AUTH, "AUTH": b"334 " + challenge + b"\r\n", "AUTH-STEP": b"235 2.7.0 ok\r\n"}
    peer = Peer(module(auth=auth(AuthMechanism.CRAM_MD5)), replies)
    outcome = peer.run()
    assert outcome.failure is None
    digest = hmac.new(PASSWORD.encode(), base64.b64decode(challenge), hashlib.md5).hexdigest()
    assert peer.sent[2] == base64.b64encode(f"{USER} {digest}".encode()) + b"\r\n"


def test_auth_auto_prefers_cram_md5_then_plain_then_login() -> None:
    for offered, first in [(b"LOGIN PLAIN CRAM-MD5", b"AUTH CRAM-MD5"), (b"LOGIN PLAIN", b"AUTH PLAIN")]:
        ehlo = b"250-mail.test\r\n250 AUTH " + offered + b"\r\n"
        peer = Peer(module(auth=auth()), {"EHLO": ehlo, "AUTH": b"535 no\r\n"})
        peer.run()
        assert peer.sent[1].startswith(first)
    peer = Peer(module(auth=auth()), {"EHLO": b"250-mail.test\r\n250 AUTH=LOGIN\r\n", "AUTH": b"535 no\r\n"})
    peer.run()
    assert peer.sent[1] == b"AUTH LOGIN\r\n"


@pytest.mark.parametrize(
    ("ehlo", "message"),
    [
        (EHLO, "the server offers no AUTH mechanism"),
        (b"250-mail.test\r\n250 AUTH LOGIN\r\n", "the server does not offer AUTH PLAIN (offers: LOGIN)"),
    ],
    ids=["no-auth", "not-plain"],
)
def test_explicit_auth_mechanism_is_not_sent_when_not_offered(ehlo: bytes, message: str) -> None:
    """Credentials never leave for a mechanism the server did not offer: only QUIT follows."""
    peer = Peer(module(auth=auth(AuthMechanism.PLAIN)), {"EHLO": ehlo})
    outcome = peer.run()
    assert outcome.failure is not None
    assert (outcome.failure.phase, outcome.failure.reason, outcome.failure.message) == (
        Phase.AUTH,
        FailureReason.AUTH_FAILED,
        message,
    )
    assert peer.sent[1:] == [b"QUIT\r\n"]


def test_only_the_ehlo_inside_tls_counts() -> None:
    """RFC 3207 4.2: the clear-text EHLO is forgotten after STARTTLS, STARTTLS itself aside."""
    peer = Peer(module(), {"EHLO": _ehlo_by_tls})
    outcome = peer.run()
    assert outcome.failure is None
    assert outcome.server.extensions == (
        ("AUTH", ("LOGIN", "PLAIN", "CRAM-MD5")),
        ("SIZE", ("2000",)),
        ("STARTTLS", ()),
    )
    assert outcome.server.max_message_size == 2000


def _auth_only_in_clear(peer: Peer) -> bytes:
    if peer.tls_done:
        return b"250-mail.test\r\n250 SIZE 2000\r\n"
    return b"250-mail.test\r\n250-AUTH CRAM-MD5 PLAIN\r\n250-X-CLEAR\r\n250 STARTTLS\r\n"


@pytest.mark.parametrize("mechanism", [AuthMechanism.AUTO, AuthMechanism.CRAM_MD5])
def test_auth_offered_only_before_tls_is_not_used(mechanism: AuthMechanism) -> None:
    peer = Peer(module("submission", auth=auth(mechanism)), {"EHLO": _auth_only_in_clear})
    outcome = peer.run()
    assert outcome.failure is not None
    assert (outcome.failure.phase, outcome.failure.reason, outcome.failure.message) == (
        Phase.AUTH,
        FailureReason.AUTH_FAILED,
        "the server offers no AUTH mechanism",
    )
    assert [line.split()[0] for line in peer.sent] == [b"EHLO", b"STARTTLS", b"EHLO", b"QUIT"]
    assert [keyword for keyword, _ in outcome.server.extensions] == ["SIZE", "STARTTLS"]


def test_expected_extensions_are_those_inside_tls() -> None:
    expect = ExpectConfig(extensions=("STARTTLS", "X-CLEAR"))
    outcome = Peer(module(expect=expect), {"EHLO": _auth_only_in_clear}).run()
    assert outcome.failure is not None
    assert (outcome.failure.reason, outcome.failure.message) == (
        FailureReason.EXPECTATION_FAILED,
        "extensions not offered: X-CLEAR",
    )
    expect = ExpectConfig(extensions=("STARTTLS", "SIZE"))
    assert Peer(module(expect=expect), {"EHLO": _auth_only_in_clear}).run().failure is None


def test_starttls_injection_in_a_later_chunk_and_quit_in_the_clear() -> None:
    session = ClientSession(module(), ehlo_name="probe.test", timeout=5.0)
    session.connection_made(0.0, 0.0)
    session.data_received(BANNER, 1.0)
    session.bytes_to_send(1.0)
    session.data_received(EHLO_STARTTLS, 2.0)
    assert session.bytes_to_send(2.0) == b"STARTTLS\r\n"
    session.data_received(b"220 go ahead\r\n", 3.0)
    assert session.status is Status.TLS and not session.has_output
    session.data_received(b"250 injected\r\n", 3.5)
    assert session.status is Status.CLOSING
    assert session.bytes_to_send(4.0) == b"QUIT\r\n"
    session.data_received(b"221 bye\r\n", 5.0)
    assert session.status is Status.DONE
    outcome = session.outcome(6.0)
    assert outcome.failure is not None
    assert (outcome.failure.phase, outcome.failure.reason) == (Phase.STARTTLS, FailureReason.PROTOCOL_ERROR)
    assert outcome.failure.message == "server sent data after its STARTTLS reply"


def test_implicit_tls_ignores_bytes_before_the_handshake() -> None:
    session = ClientSession(module("smtps_handshake"), ehlo_name="probe.test", timeout=5.0)
    session.connection_made(0.0, 0.0)
    assert session.status is Status.TLS
    session.data_received(BANNER, 0.5)  # a plaintext server racing the handshake
    assert session.status is Status.TLS and not session.phases[1:]
    session.tls_established(1.0, 2.0)
    session.data_received(BANNER, 3.0)
    assert session.bytes_to_send(3.0) == b"EHLO probe.test\r\n"


@pytest.mark.parametrize("at", ["banner", "ehlo", "rcpt"])
def test_connection_closed_mid_phase(at: str) -> None:
    close_after = {"banner": 0, "ehlo": 0, "rcpt": 2}[at]
    peer = Peer(FULL)
    peer.run(None if at == "banner" else BANNER, close_after=close_after)
    if at == "banner":
        peer.session.connection_lost(peer.tick())
    outcome = peer.session.outcome(peer.tick())
    assert failure(outcome) == (Phase(at), FailureReason.CONNECTION_CLOSED)
    assert outcome.failure is not None and outcome.failure.message == "connection closed by the server"


def test_deadline_fails_the_phase_under_way_without_quit() -> None:
    peer = Peer(FULL, {"RCPT": b""})  # the server never answers RCPT
    peer.run()
    peer.session.deadline_reached(peer.tick())
    assert peer.session.status is Status.DONE and not peer.session.has_output
    outcome = peer.session.outcome(peer.tick())
    assert failure(outcome) == (Phase.RCPT, FailureReason.TIMEOUT)
    assert outcome.failure is not None and outcome.failure.message == "no answer within the 5s deadline"
    assert ("*", "timeout in rcpt") in [(d, w) for _, d, w in outcome.events]
    assert names(outcome) == ["connect", "banner", "ehlo", "mail"]


def test_no_quit_reply_is_not_a_failure_unless_fail_on_quit() -> None:
    for fail_on_quit, ending in [(False, "deadline"), (False, "close"), (True, "deadline"), (True, "close")]:
        peer = Peer(module(fail_on_quit=fail_on_quit), {"QUIT": b""})
        peer.run()
        if ending == "deadline":
            peer.session.deadline_reached(peer.tick())
        else:
            peer.session.connection_lost(peer.tick())
        outcome = peer.session.outcome(peer.tick())
        if not fail_on_quit:
            assert outcome.failure is None
            assert "(not a failure: fail_on_quit is off)" in str(outcome.events[-1][2])
        else:
            reason = FailureReason.TIMEOUT if ending == "deadline" else FailureReason.CONNECTION_CLOSED
            assert failure(outcome) == (Phase.QUIT, reason)


def test_short_quit_after_failure_and_its_grace() -> None:
    peer = Peer(FULL, {"RCPT": b"451 4.3.0 later\r\n", "QUIT": b""})
    peer.run()
    session = peer.session
    assert session.status is Status.CLOSING and peer.sent[-1] == b"QUIT\r\n"
    session.deadline_reached(peer.tick())  # the driver's grace is over
    assert session.status is Status.DONE
    assert failure(session.outcome(peer.tick())) == (Phase.RCPT, FailureReason.REPLY_TEMPORARY)


def test_driver_failures_end_the_session_at_once() -> None:
    session = ClientSession(module(), ehlo_name="probe.test", timeout=5.0)
    session.connecting()
    session.fail(1.0, FailureReason.LOCAL_ERROR, "the exporter could not run this probe: Too many open files")
    assert session.status is Status.DONE and not session.has_output
    outcome = session.outcome(2.0)
    assert failure(outcome) == (Phase.CONNECT, FailureReason.LOCAL_ERROR)


def test_transcript_is_bounded() -> None:
    chatty = b"".join(b"250-line %d\r\n" % i for i in range(60)) + b"250 end\r\n"
    peer = Peer(module("smtp_full", rcpt_to=tuple(f"r{i}@x.test" for i in range(300))), {"EHLO": chatty})
    outcome = peer.run()
    assert outcome.failure is None
    assert len(outcome.events) == MAX_TRANSCRIPT_EVENTS


# Arbitrary servers: whatever they send, however it is cut, the session ends in a result or a
# defined failure, never another exception.

MODULES = [
    module(),
    FULL,
    module(auth=auth(), expect=ExpectConfig(extensions=("SIZE",))),
    module(auth=auth(AuthMechanism.LOGIN), fail_on_quit=True),
    module(auth=auth(AuthMechanism.CRAM_MD5), starttls=StartTLS.REQUIRED),
    module("smtps_handshake", transaction=Transaction.ENVELOPE),
]
PIECES = [
    BANNER,
    EHLO,
    EHLO_STARTTLS,
    EHLO_AUTH,
    b"220 2.0.0 Ready\r\n",
    b"250 ok\r\n",
    b"251 fwd\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"334 !!\r\n",
    b"235 ok\r\n",
    b"354 go\r\n",
    b"221 bye\r\n",
    b"421 4.3.0 bye\r\n",
    b"550 5.1.1 no\r\n",
    b"250-cont\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"GET / HTTP/1.1\r\n",
]
SERVER_BYTES = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=40)), max_size=30)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    mod=st.sampled_from(MODULES),
    chunks=SERVER_BYTES,
    tls_ok=st.booleans(),
    ending=st.sampled_from(["deadline", "close", "none"]),
)
def test_arbitrary_servers_end_in_a_result(
    mod: ModuleConfig, chunks: list[bytes], tls_ok: bool, ending: str
) -> None:
    session = ClientSession(mod, ehlo_name="probe.test", timeout=5.0, message=MESSAGE)
    now = 0.0
    session.connecting()
    session.connection_made(now, now)
    for chunk in chunks:
        now += 1.0
        if session.status is Status.TLS:
            if tls_ok:
                session.tls_established(now, now)
            else:
                session.fail(now, FailureReason.TLS_HANDSHAKE_FAILED, "no")
        session.data_received(chunk, now)
        if session.has_output:
            sent = session.bytes_to_send(now)
            assert sent.endswith(b"\r\n")
    if ending == "deadline":
        session.deadline_reached(now + 1)
    elif ending == "close":
        session.connection_lost(now + 1)
        if session.status is Status.TLS:  # the driver's handshake then fails, and says so
            session.fail(now + 1, FailureReason.TLS_HANDSHAKE_FAILED, "no")
    outcome = session.outcome(now + 2)
    if session.status is Status.DONE or ending != "none":
        assert session.status is Status.DONE
    if outcome.failure is not None:
        assert isinstance(outcome.failure.reason, FailureReason)
        assert outcome.failure.message
    assert len(outcome.events) <= MAX_TRANSCRIPT_EVENTS + 1
    assert PASSWORD not in repr(outcome)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_arbitrary_chunking_of_a_good_server(cuts: list[int]) -> None:
    """A well-behaved server's bytes cut anywhere: the conversation is the same."""
    stream = [BANNER, EHLO, REPLIES["MAIL"], REPLIES["RCPT"], REPLIES["RCPT"], REPLIES["DATA"], REPLIES["."]]
    session = ClientSession(FULL, ehlo_name="probe.test", timeout=5.0, message=MESSAGE)
    session.connection_made(0.0, 0.0)
    sent = []
    for reply in stream:
        points = sorted({0, len(reply), *(c % (len(reply) + 1) for c in cuts)})
        for start, end in itertools.pairwise(points):
            session.data_received(reply[start:end], 1.0)
        if session.has_output:
            sent.append(session.bytes_to_send(1.0))
    session.data_received(REPLIES["QUIT"], 2.0)
    outcome = session.outcome(3.0)
    assert outcome.failure is None
    assert sent[-1] == b"QUIT\r\n" and len(sent) == 7
