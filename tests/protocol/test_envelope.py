"""MAIL FROM's ESMTP parameters in memory: SIZE (RFC 1870), BODY=8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531) and REQUIRETLS (RFC 8689), each declared when it should be and the probe
refused (expectation_failed, before MAIL) where a real sender would not send the message."""

from __future__ import annotations

import pytest

from smtp_exporter.config.schema import SMTPUTF8, BodyType, MessageConfig, Pipelining, StartTLS
from smtp_exporter.model import Phase
from smtp_exporter.protocol.envelope import message_size
from tests.protocol.wire import BYE, EHLO_ALL, GO_AHEAD, OK_MAIL, OK_RCPT, QUEUED, Wire, module

ONE_AT_A_TIME = {"pipelining": Pipelining.NEVER}
EHLO_SIZE_ONLY = b"250-mail.test\r\n250 SIZE 10240000\r\n"
EHLO_7BIT = b"250-mail.test\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n"
NON_ASCII_BODY = MessageConfig(body="Grüße aus Köln")


def _mail_line(wire: Wire) -> bytes:
    """The MAIL command the session sent (first line of its write after EHLO)."""
    return wire.writes[1][1].split(b"\r\n", 1)[0]


def _refused_before_mail(wire: Wire, text: str) -> None:
    """Nothing of the transaction went out: QUIT follows EHLO, and the probe failed in mail."""
    assert [chunk for _, chunk in wire.writes] == [b"EHLO probe.test\r\n", b"QUIT\r\n"]
    wire.feed(BYE)
    assert wire.failure() == (Phase.MAIL, "expectation_failed")
    failure = wire.outcome().failure
    assert failure is not None and text in failure.message, failure


def _complete(wire: Wire) -> None:
    """Answer a one-command-at-a-time transaction to its end; it succeeds."""
    for reply in (OK_MAIL, OK_RCPT, GO_AHEAD, QUEUED, BYE):
        wire.feed(reply)
    assert wire.failure() is None, wire.outcome().failure


# SIZE


def test_size_is_declared_when_offered_without_dot_stuffing() -> None:
    dotted = MessageConfig(body=".a\n..b\nc")
    wire = Wire(module(message=dotted, **ONE_AT_A_TIME)).start(EHLO_SIZE_ONLY)
    assert wire.message is not None
    undotted = wire.message[:-3].replace(b"\r\n..", b"\r\n.")
    assert message_size(wire.message) == len(undotted)
    assert _mail_line(wire) == f"MAIL FROM:<> SIZE={len(undotted)}".encode()
    _complete(wire)
    assert f"MAIL FROM:<> SIZE={len(undotted)}" in wire.client_lines()  # shown as sent


@pytest.mark.parametrize(
    ("ehlo", "changes"),
    [
        (b"250-mail.test\r\n250 8BITMIME\r\n", {}),
        (EHLO_SIZE_ONLY, {"size_declaration": False}),
    ],
    ids=["not_offered", "size_declaration_false"],
)
def test_size_is_not_declared(ehlo: bytes, changes: dict[str, object]) -> None:
    wire = Wire(module(**ONE_AT_A_TIME, **changes)).start(ehlo)  # type: ignore[arg-type]
    assert _mail_line(wire) == b"MAIL FROM:<>"
    _complete(wire)


@pytest.mark.parametrize("size_declaration", [True, False])
def test_a_message_over_the_advertised_limit_is_not_sent(size_declaration: bool) -> None:
    wire = Wire(module(size_declaration=size_declaration))
    assert wire.message is not None
    size = message_size(wire.message)
    wire.start(f"250-mail.test\r\n250-PIPELINING\r\n250 SIZE {size - 1}\r\n".encode())
    _refused_before_mail(
        wire, f"the message ({size} bytes) is larger than the server's SIZE limit ({size - 1} bytes)"
    )


@pytest.mark.parametrize("offer", [b"SIZE", b"SIZE 0"], ids=["no_number", "zero"])
def test_a_size_without_a_limit_limits_nothing(offer: bytes) -> None:
    wire = Wire(module(**ONE_AT_A_TIME)).start(b"250-mail.test\r\n250 " + offer + b"\r\n")
    assert _mail_line(wire).startswith(b"MAIL FROM:<> SIZE=")
    _complete(wire)


def test_a_message_exactly_at_the_limit_is_sent() -> None:
    wire = Wire(module(**ONE_AT_A_TIME))
    assert wire.message is not None
    size = message_size(wire.message)
    wire.start(f"250-mail.test\r\n250 SIZE {size}\r\n".encode())
    assert _mail_line(wire) == f"MAIL FROM:<> SIZE={size}".encode()
    _complete(wire)


# BODY=8BITMIME


def test_8bitmime_declared_for_8bit_content_when_offered() -> None:
    wire = Wire(module(message=NON_ASCII_BODY, **ONE_AT_A_TIME)).start(EHLO_ALL)
    assert wire.message is not None and "Grüße aus Köln".encode() in wire.message
    assert _mail_line(wire).endswith(b" BODY=8BITMIME")
    assert b"SMTPUTF8" not in _mail_line(wire)  # a body is no address or header
    _complete(wire)


def test_8bitmime_not_declared_for_an_ascii_message() -> None:
    wire = Wire(module(**ONE_AT_A_TIME)).start(EHLO_ALL)
    assert b"BODY=" not in _mail_line(wire)


def test_8bit_content_to_a_server_without_8bitmime_is_not_sent() -> None:
    wire = Wire(module(message=NON_ASCII_BODY)).start(EHLO_7BIT)
    _refused_before_mail(wire, "the message has 8-bit content and the server does not offer 8BITMIME")


def test_7bit_never_declares_it() -> None:
    wire = Wire(module(body_type=BodyType.SEVEN_BIT, **ONE_AT_A_TIME)).start(EHLO_ALL)
    assert b"BODY=" not in _mail_line(wire)
    _complete(wire)


# SMTPUTF8

JOERG = "jörg@example.org"


def test_a_non_ascii_address_declares_smtputf8_when_offered() -> None:
    wire = Wire(module(mail_from=JOERG, rcpt_to=("postmaster@bücher.example",), **ONE_AT_A_TIME))
    wire.start(EHLO_ALL)
    mail = _mail_line(wire)
    assert mail.startswith(f"MAIL FROM:<{JOERG}> SIZE=".encode())
    # The address is in the From and To headers too: 8-bit content, so BODY=8BITMIME as well.
    assert mail.endswith(b" BODY=8BITMIME SMTPUTF8")
    wire.feed(OK_MAIL)
    assert wire.last == "RCPT TO:<postmaster@bücher.example>\r\n".encode()
    for reply in (OK_RCPT, GO_AHEAD, QUEUED, BYE):
        wire.feed(reply)
    assert wire.failure() is None
    assert any(line.endswith(" SMTPUTF8") for line in wire.client_lines())


@pytest.mark.parametrize(
    "changes",
    [
        {"mail_from": JOERG},
        {"rcpt_to": ("jörg@example.org",)},
        {"message": MessageConfig(subject="Grüße")},
        {"message": MessageConfig(headers=(("X-Probe", "Köln"),))},
    ],
    ids=["mail_from", "rcpt_to", "subject", "header"],
)
def test_smtputf8_needed_but_not_offered_sends_nothing_non_ascii(changes: dict[str, object]) -> None:
    wire = Wire(module(**changes)).start(b"250-mail.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")  # type: ignore[arg-type]
    _refused_before_mail(wire, "the server does not offer SMTPUTF8, needed for a non-ASCII")
    assert wire.sent().isascii()


def test_a_non_ascii_subject_needs_no_smtputf8_without_a_message() -> None:
    """An envelope probe sends no header: only the addresses count."""
    wire = Wire(module("smtp_envelope", message=MessageConfig(subject="Grüße"))).start(
        b"250-mail.test\r\n250 PIPELINING\r\n"
    )
    assert wire.last == b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRSET\r\n"


def test_ascii_declares_no_smtputf8() -> None:
    wire = Wire(module(**ONE_AT_A_TIME)).start(EHLO_ALL)
    assert b"SMTPUTF8" not in _mail_line(wire)


def test_smtputf8_required_is_always_declared() -> None:
    wire = Wire(module(smtputf8=SMTPUTF8.REQUIRED, **ONE_AT_A_TIME)).start(EHLO_ALL)
    assert _mail_line(wire).endswith(b" SMTPUTF8")
    _complete(wire)


def test_smtputf8_required_and_not_offered() -> None:
    wire = Wire(module(smtputf8=SMTPUTF8.REQUIRED)).start(EHLO_7BIT)
    _refused_before_mail(wire, "the server does not offer SMTPUTF8, needed for smtputf8: required")


# REQUIRETLS

EHLO_CLEAR = b"250-mail.test\r\n250-PIPELINING\r\n250-REQUIRETLS\r\n250 STARTTLS\r\n"


def _over_starttls(ehlo_tls: bytes, **changes: object) -> Wire:
    wire = Wire(module(starttls=StartTLS.REQUIRED, requiretls=True, **changes))  # type: ignore[arg-type]
    wire.start(EHLO_CLEAR)
    assert wire.last == b"STARTTLS\r\n"
    wire.feed(b"220 2.0.0 Ready to start TLS\r\n")
    wire.handshake()
    assert wire.last == b"EHLO probe.test\r\n"
    wire.feed(ehlo_tls)
    return wire


def test_requiretls_declared_over_tls_when_offered() -> None:
    wire = _over_starttls(b"250-mail.test\r\n250-SIZE 0\r\n250 REQUIRETLS\r\n", **ONE_AT_A_TIME)
    assert wire.last.startswith(b"MAIL FROM:<> SIZE=") and wire.last.endswith(b" REQUIRETLS\r\n")
    _complete(wire)


def test_requiretls_offered_only_in_the_clear_is_not_offered() -> None:
    """RFC 3207 4.2: what the clear-text EHLO said does not count once TLS is up."""
    wire = _over_starttls(b"250-mail.test\r\n250 PIPELINING\r\n")
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() == (Phase.MAIL, "expectation_failed")
    failure = wire.outcome().failure
    assert failure is not None and "does not offer REQUIRETLS" in failure.message


def test_requiretls_without_tls_is_not_sent() -> None:
    """starttls: auto and a server without STARTTLS: REQUIRETLS mail cannot go in the clear."""
    wire = Wire(module(requiretls=True)).start(b"250-mail.test\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n")
    _refused_before_mail(wire, "REQUIRETLS needs TLS, and the connection is not encrypted")


def test_requiretls_over_implicit_tls() -> None:
    wire = Wire(module(implicit_tls=True, requiretls=True, **ONE_AT_A_TIME)).start(
        b"250-mail.test\r\n250 REQUIRETLS\r\n"
    )
    assert _mail_line(wire) == b"MAIL FROM:<> REQUIRETLS"
    _complete(wire)
