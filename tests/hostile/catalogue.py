"""The catalogue of hostile SMTP peers (issue 6), beyond issue 2's basic misbehaviours.

Each `Hostile` names a server script (built inside the peer process, tests/hostile/
peer_host.py, from the certificate `Material`), the probe module options to use against
it, and what an operator reading the resulting alert should see: the phase and the reason,
or success when the misbehaviour is harmless. `bug` marks an entry where the engine does
something else today: its test is `xfail(strict=True)` and the text says what is wrong.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smtp_exporter.config.schema import Pipelining
from smtp_exporter.model import FailureReason, Phase
from tests.hostile.certs import Material
from tests.servers.scripted import (
    BANNER,
    DEFAULT_REPLIES,
    EHLO_REPLY,
    EHLO_STARTTLS_REPLY,
    Answer,
    Close,
    ExpectData,
    ExpectLine,
    HalfClose,
    Reset,
    Script,
    Send,
    Sleep,
    StartTLS,
    Trickle,
    minimal_conversation,
)

TIMEOUT = 2.0  # the module timeout of every hostile probe: the deadline the probe must keep
PASSWORD = "hostile-catalogue-password-7f3a"  # AUTH entries: must never appear in a result

ECHO = "echo"  # a peer that is not a script: tests/hostile/peer_host.py implements it
ECHO_AFTER_BANNER = "echo-after-banner"  # (custom peers are selected by `script`, a string)
AUTH_ECHO = "auth-echo"  # offers AUTH, answers 334 to AUTH LOGIN steps, rejects quoting the last line

R = FailureReason
P = Phase


@dataclass(frozen=True, slots=True)
class Hostile:
    name: str
    description: str
    script: Callable[[Material], Script] | str  # a script, or the name of a custom peer
    phase: Phase | None  # None: the probe must succeed
    reason: FailureReason | None
    module: Mapping[str, Any] = field(default_factory=dict)  # ModuleConfig overrides
    ca: str = "test"  # which CA the probe trusts: "test" (the suite's) or "chain" (the 50-chain root)
    bug: str | None = None
    or_phase: Phase | None = None  # a race decides between `phase` and this one; both are right
    attempts: int = 1  # probes in a row, each of which must end as expected (for racy peers)

    @property
    def phases(self) -> tuple[Phase | None, ...]:
        return (self.phase,) if self.or_phase is None else (self.phase, self.or_phase)


def _ctx(cert: str, key: str, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(cert, key)
    return context


def _server_ctx(m: Material) -> ssl.SSLContext:
    return _ctx(m.server_cert, m.server_key)


def _steps(*replies: bytes, banner: bytes = BANNER) -> Callable[[Material], Script]:
    """Banner, then for each reply: read one client line and answer it."""

    def script(_: Material) -> Script:
        steps: list[Any] = [Send(banner)]
        for reply in replies:
            steps += [ExpectLine(), Send(reply)]
        return steps

    return script


def _answer(
    banner: bytes = BANNER, default: bytes | None = None, **overrides: bytes
) -> Callable[[Material], Script]:
    def script(_: Material) -> Script:
        steps = minimal_conversation(banner=banner, **overrides)
        if default is not None:
            steps[-1] = Answer({**DEFAULT_REPLIES, **overrides}, default=default)
        return steps

    return script


def _fixed(*steps: Any) -> Callable[[Material], Script]:
    return lambda _: list(steps)


def _starttls_then(*after: Any, ehlo: bytes = EHLO_STARTTLS_REPLY) -> Callable[[Material], Script]:
    return _fixed(Send(BANNER), ExpectLine(), Send(ehlo), ExpectLine(), *after)


def _implicit_tls(cert: Callable[[Material], ssl.SSLContext]) -> Callable[[Material], Script]:
    return lambda m: [StartTLS(cert(m)), *minimal_conversation()]


# An EHLO offering what the AUTH entries use: the probe sends AUTH only for an offered mechanism.
AUTH_OFFERED = b"250-mail.test\r\n250-AUTH CRAM-MD5 PLAIN LOGIN\r\n250 8BITMIME\r\n"
ENVELOPE = {"transaction": "envelope"}
MESSAGE = {"transaction": "message"}
IMPLICIT = {"implicit_tls": True}
TLS_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"  # a fatal handshake_failure alert record, in the clear
OVERSIZED_EHLO = (
    b"250-mail.test\r\n"
    + b"".join(b"250-X-PAD%02d " % i + b"p" * 3990 + b"\r\n" for i in range(63))
    + b"250 8BITMIME\r\n"
)
MANY_EXTENSIONS = (
    b"250-mail.test\r\n"
    + b"".join(b"250-X-EXT%02d a b c\r\n" % i for i in range(60))
    + b"250-SIZE "
    + b" ".join(b"p%d" % i for i in range(500))
    + b"\r\n"
    + b"250 8BITMIME\r\n"
)

CATALOGUE: tuple[Hostile, ...] = (
    # --- silence and slowness: the deadline is the only way out -----------------------------
    Hostile(
        "greeting_after_10_minutes",
        "accepts, then greets after 600 s",
        _fixed(Sleep(600), Send(BANNER)),
        P.BANNER,
        R.TIMEOUT,
    ),
    Hostile(
        "tarpit_9s_before_banner",
        "a tarpit: 9 s before the greeting",
        _fixed(Sleep(9), Send(BANNER)),
        P.BANNER,
        R.TIMEOUT,
    ),
    Hostile(
        "tarpit_9s_every_line",
        "greets at once, then answers every line after 9 s",
        _fixed(
            Send(BANNER),
            ExpectLine(),
            Sleep(9),
            Send(EHLO_REPLY),
            ExpectLine(),
            Sleep(9),
            Send(b"221 bye\r\n"),
        ),
        P.EHLO,
        R.TIMEOUT,
    ),
    Hostile(
        "slow_endless_multiline_banner",
        "220- continuation lines, one byte every 20 ms",
        _fixed(Trickle(b"220-still greeting\r\n" * 60, 0.02)),
        P.BANNER,
        R.TIMEOUT,
    ),
    Hostile(
        "cr_only_banner",
        "a greeting ended by CR alone, then silence: the line never ends",
        _fixed(Send(b"220 mail.test ESMTP\r")),
        P.BANNER,
        R.TIMEOUT,
    ),
    Hostile(
        "echo_without_banner",
        "an echo service: never greets, repeats what it hears",
        ECHO,
        P.BANNER,
        R.TIMEOUT,
    ),
    # --- size -------------------------------------------------------------------------------
    Hostile(
        "greeting_of_100000_lines",
        "a 220 greeting of 100,000 continuation lines",
        _fixed(Send(b"220-greetings from a very chatty server\r\n" * 100_000 + BANNER)),
        P.BANNER,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "ehlo_reply_256k",
        "an EHLO reply of 64 lines of 4 KB",
        _steps(OVERSIZED_EHLO),
        P.EHLO,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "ehlo_61_extensions_500_params",
        "many extensions and a 500-parameter SIZE: kept, bounded",
        _answer(EHLO=MANY_EXTENSIONS),
        None,
        None,
    ),
    Hostile(
        "banner_4000_chars",
        "a single greeting line just under the line bound",
        _answer(banner=b"220 " + b"x" * 4000 + b"\r\n"),
        None,
        None,
    ),
    # --- bytes that are not text ----------------------------------------------------------
    Hostile(
        "nul_in_banner",
        "NUL byte inside the greeting",
        _fixed(Send(b"220 mail.test\x00ESMTP\r\n")),
        P.BANNER,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "nul_in_ehlo_reply",
        "NUL byte inside an EHLO continuation line",
        _steps(b"250-mail.test\r\n250-SIZE\x00 1000\r\n250 8BITMIME\r\n"),
        P.EHLO,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "non_utf8_banner",
        "Latin-1 and invalid UTF-8 in the greeting text: harmless",
        _answer(banner=b"220 mail.t\xe9st ESMTP caf\xe9 \xff\xfe\r\n"),
        None,
        None,
    ),
    Hostile(
        "control_chars_banner",
        "terminal escapes, BEL and DEL in the greeting: harmless",
        _answer(banner=b"220 \x1b[2J\x1b[31mmail.test\x07\x7f ESMTP\r\n"),
        None,
        None,
    ),
    Hostile(
        "binary_banner",
        "a PNG file instead of a greeting",
        _fixed(Send(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00")),
        P.BANNER,
        R.UNEXPECTED_REPLY,
    ),
    Hostile(
        "binary_with_nul_banner",
        "random binary with NUL bytes and CRs",
        _fixed(Send(bytes(range(256)) * 16)),
        P.BANNER,
        R.PROTOCOL_ERROR,
    ),
    # --- replies out of place -------------------------------------------------------------
    Hostile(
        "reply_before_ehlo",
        "a second reply pipelined after the greeting, unasked",
        _answer(banner=BANNER + b"250 2.0.0 unsolicited\r\n"),
        P.EHLO,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "reply_to_command_never_sent",
        "two replies to EHLO: the extra one answers nothing",
        _answer(EHLO=EHLO_REPLY + b"250 2.0.0 and another thing\r\n"),
        P.MAIL,
        R.PROTOCOL_ERROR,
        module=ENVELOPE,
    ),
    Hostile(
        "pipelined_garbage_after_ehlo",
        "an HTTP request line after the EHLO reply",
        _answer(EHLO=EHLO_REPLY + b"GET / HTTP/1.1\r\n"),
        P.EHLO,
        R.UNEXPECTED_REPLY,
        module=ENVELOPE,
    ),
    Hostile(
        "echo_after_banner",
        "greets, then echoes every line back (EHLO comes back as EHLO)",
        ECHO_AFTER_BANNER,
        P.EHLO,
        R.UNEXPECTED_REPLY,
    ),
    # --- codes out of range and bad grammar -------------------------------------------------
    Hostile(
        "code_000_banner",
        "greeting with code 000",
        _fixed(Send(b"000 mail.test zero\r\n")),
        P.BANNER,
        R.UNEXPECTED_REPLY,
    ),
    Hostile(
        "code_999_banner",
        "greeting with code 999",
        _fixed(Send(b"999 mail.test nine\r\n")),
        P.BANNER,
        R.UNEXPECTED_REPLY,
    ),
    Hostile(
        "code_120_banner",
        "greeting with a 1yz code (no such class in SMTP)",
        _fixed(Send(b"120 mail.test wait\r\n")),
        P.BANNER,
        R.UNEXPECTED_REPLY,
    ),
    Hostile(
        "code_6xx_at_rcpt",
        "RCPT answered 650",
        _answer(RCPT=b"650 6.1.1 what\r\n"),
        P.RCPT,
        R.UNEXPECTED_REPLY,
        module=ENVELOPE,
    ),
    Hostile(
        "continuation_code_changes",
        "EHLO continuation lines with different codes",
        _steps(b"250-mail.test\r\n251-PIPELINING\r\n250 8BITMIME\r\n"),
        P.EHLO,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "cr_only_line_ends",
        "EHLO reply lines ended by CR alone",
        _steps(b"250-mail.test\r250-SIZE\r250 OK\r"),
        P.EHLO,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "enhanced_status_garbage",
        "250 with a malformed enhanced status code: harmless",
        _answer(MAIL=b"250 9.99.9999 ok\r\n"),
        None,
        None,
        module=ENVELOPE,
    ),
    Hostile(
        "data_answered_250",
        "DATA answered 250 instead of 354",
        _answer(DATA=b"250 2.0.0 ok\r\n"),
        P.DATA,
        R.UNEXPECTED_REPLY,
        module=MESSAGE,
    ),
    Hostile(
        "mail_answered_354",
        "MAIL answered 354, one command at a time",
        _answer(MAIL=b"354 go on\r\n"),
        P.MAIL,
        R.UNEXPECTED_REPLY,
        module=ENVELOPE | {"pipelining": Pipelining.NEVER},
    ),
    Hostile(
        "mail_answered_354_pipelined",
        "MAIL answered 354 in a pipelined batch (a broken batch: issue 17)",
        _answer(MAIL=b"354 go on\r\n"),
        P.MAIL,
        R.PROTOCOL_ERROR,
        module=ENVELOPE,
    ),
    Hostile(
        "ehlo_and_helo_refused",
        "EHLO and HELO both refused with 502",
        _answer(EHLO=b"502 5.5.1 no\r\n", HELO=b"502 5.5.1 no\r\n"),
        P.HELO,
        R.REPLY_PERMANENT,
    ),
    # --- connections that end -----------------------------------------------------------
    Hostile(
        "accept_then_rst",
        "accepts TCP, then resets it 100 ms later",
        _fixed(Sleep(0.1), Reset()),
        P.BANNER,
        R.CONNECTION_CLOSED,
    ),
    Hostile(
        "accept_then_rst_at_once",
        "accepts TCP and resets it at once, racing the client's connect",
        _fixed(Reset()),
        P.BANNER,
        R.CONNECTION_CLOSED,
        or_phase=P.CONNECT,
        attempts=20,
    ),
    Hostile(
        "rst_after_ehlo",
        "resets the connection instead of answering EHLO",
        _fixed(Send(BANNER), ExpectLine(), Reset()),
        P.EHLO,
        R.CONNECTION_CLOSED,
    ),
    Hostile(
        "half_close_before_banner",
        "shuts down its sending side before greeting",
        _fixed(HalfClose()),
        P.BANNER,
        R.CONNECTION_CLOSED,
    ),
    Hostile(
        "half_close_after_banner",
        "greets, then shuts down its sending side (keeps reading)",
        _fixed(Send(BANNER), HalfClose()),
        P.EHLO,
        R.CONNECTION_CLOSED,
    ),
    Hostile(
        "shutdown_421_at_rcpt",
        "421 shutdown in the middle of the transaction, then closes",
        _steps(EHLO_REPLY, b"250 2.1.0 Ok\r\n", b"421 4.3.2 Service shutting down\r\n"),
        P.RCPT,
        R.REPLY_TEMPORARY,
        module=ENVELOPE,
    ),
    Hostile(
        "shutdown_421_after_message",
        "421 after the final dot (a crash while queueing)",
        _answer(**{".": b"421 4.3.0 shutting down, message not queued\r\n"}),
        P.MESSAGE,
        R.REPLY_TEMPORARY,
        module=MESSAGE,
    ),
    Hostile(
        "close_after_354",
        "answers DATA with 354, then closes",
        _fixed(
            Send(BANNER),
            ExpectLine(),
            Send(EHLO_REPLY),
            ExpectLine(),
            Send(b"250 ok\r\n"),
            ExpectLine(),
            Send(b"250 ok\r\n"),
            ExpectLine(),
            Send(b"354 go ahead\r\n"),
            Close(),
        ),
        P.MESSAGE,
        R.CONNECTION_CLOSED,
        module=MESSAGE,
    ),
    Hostile(
        "quit_never_answered",
        "the conversation succeeds but QUIT gets no reply at all",
        _steps(EHLO_REPLY),
        None,
        None,
    ),
    # --- STARTTLS and TLS ------------------------------------------------------------------
    Hostile(
        "starttls_refused_454",
        "offers STARTTLS, then refuses it with 454",
        _starttls_then(
            Send(b"454 4.7.0 TLS not available due to local problem\r\n"), Answer(DEFAULT_REPLIES)
        ),
        P.STARTTLS,
        R.REPLY_TEMPORARY,
    ),
    Hostile(
        "starttls_injection",
        "plaintext pipelined after its 220 to STARTTLS (CVE-2011-0411)",
        _starttls_then(Send(b"220 2.0.0 Ready\r\n250 injected in the clear\r\n")),
        P.STARTTLS,
        R.PROTOCOL_ERROR,
    ),
    Hostile(
        "tls_alert_after_starttls",
        "answers the ClientHello with a fatal TLS alert",
        _starttls_then(Send(b"220 2.0.0 Ready\r\n"), ExpectData(), Send(TLS_ALERT), Close()),
        P.TLS,
        R.TLS_HANDSHAKE_FAILED,
    ),
    Hostile(
        "tls_alert_implicit",
        "implicit TLS port answering with a fatal alert",
        _fixed(ExpectData(), Send(TLS_ALERT), Close()),
        P.TLS,
        R.TLS_HANDSHAKE_FAILED,
        module=IMPLICIT,
    ),
    Hostile(
        "tls_1_1_only",
        "a server that only speaks TLS 1.1 (the probe requires 1.2)",
        _implicit_tls(lambda m: _ctx(m.server_cert, m.server_key, maximum=ssl.TLSVersion.TLSv1_1)),
        P.TLS,
        R.TLS_HANDSHAKE_FAILED,
        module=IMPLICIT,
    ),
    Hostile(
        "certificate_chain_of_50",
        "a valid chain of 50 certificates, root trusted",
        _implicit_tls(lambda m: _ctx(m.chain_cert, m.chain_key)),
        None,
        None,
        module=IMPLICIT,
        ca="chain",
    ),
    Hostile(
        "certificate_chain_of_50_untrusted",
        "the 50-certificate chain, root unknown",
        _implicit_tls(lambda m: _ctx(m.chain_cert, m.chain_key)),
        P.TLS,
        R.TLS_CERT_INVALID,
        module=IMPLICIT,
    ),
    Hostile(
        "certificate_of_1mb",
        "a 1 MB certificate (tens of thousands of SANs)",
        _implicit_tls(lambda m: _ctx(m.huge_cert, m.huge_key)),
        P.TLS,
        R.TLS_HANDSHAKE_FAILED,
        module=IMPLICIT,
    ),
    Hostile(
        "certificate_of_1mb_starttls",
        "the 1 MB certificate after STARTTLS",
        lambda m: [
            Send(BANNER),
            ExpectLine(),
            Send(EHLO_STARTTLS_REPLY),
            ExpectLine(),
            Send(b"220 2.0.0 Ready\r\n"),
            StartTLS(_ctx(m.huge_cert, m.huge_key)),
            Answer(DEFAULT_REPLIES),
        ],
        P.TLS,
        R.TLS_HANDSHAKE_FAILED,
    ),
    # --- AUTH ------------------------------------------------------------------------------
    Hostile(
        "auth_endless_challenge",
        "AUTH LOGIN answered 334 forever",
        _answer(default=b"334 UGFzc3dvcmQ6\r\n", EHLO=AUTH_OFFERED, AUTH=b"334 VXNlcm5hbWU6\r\n"),
        P.AUTH,
        R.AUTH_FAILED,
        module={"auth": "LOGIN"},
    ),
    Hostile(
        "auth_cram_md5_bad_challenge",
        "a CRAM-MD5 challenge that is not base64",
        _answer(EHLO=AUTH_OFFERED, AUTH=b"334 !!!not base64!!!\r\n"),
        P.AUTH,
        R.PROTOCOL_ERROR,
        module={"auth": "CRAM-MD5"},
    ),
    Hostile(
        "auth_plain_echoed_back",
        "rejects AUTH PLAIN, quoting the client's line (credentials) back",
        AUTH_ECHO,
        P.AUTH,
        R.AUTH_FAILED,
        module={"auth": "PLAIN"},
    ),
    Hostile(
        "auth_login_echoed_back",
        "rejects AUTH LOGIN, quoting the password line back",
        AUTH_ECHO,
        P.AUTH,
        R.AUTH_FAILED,
        module={"auth": "LOGIN"},
    ),
)

BY_NAME = {h.name: h for h in CATALOGUE}
assert len(BY_NAME) == len(CATALOGUE), "duplicate catalogue names"
