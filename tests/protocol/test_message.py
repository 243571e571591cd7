"""build_message: headers, CRLF line ends, dot-stuffing and the final <CRLF>.<CRLF>."""

from __future__ import annotations

import email.parser
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_exporter.protocol.message import Token, build_message

BASE = {
    "mail_from": "probe@example.org",
    "rcpt_to": ("postmaster@example.net", "abuse@example.net"),
    "subject": "smtp-exporter probe",
    "headers": (("X-Probe", "yes"),),
    "domain": "probe.example.org",
    "token": Token("roundtrip", 1_700_000_000, "abc123"),
}


def build(body: str, **overrides: object) -> bytes:
    return build_message(**{**BASE, "body": body, **overrides})  # type: ignore[arg-type]


def unstuff(message: bytes) -> bytes:
    """What a receiving server stores: final dot removed, leading dots un-doubled."""
    assert message.endswith(b"\r\n.\r\n")
    lines = message[: -len(b".\r\n")].split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def test_required_headers_are_present() -> None:
    parsed = email.parser.BytesParser(policy=email.policy.SMTP).parsebytes(unstuff(build("hello")))
    assert parsed["Date"] == "Tue, 14 Nov 2023 22:13:20 -0000"
    assert parsed["Message-ID"] == "<abc123@probe.example.org>"
    assert parsed["From"].addresses[0].addr_spec == "probe@example.org"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["postmaster@example.net", "abuse@example.net"]
    assert parsed["Subject"] == "smtp-exporter probe"
    assert parsed["X-Probe"] == "yes"
    assert parsed["X-SMTP-Exporter-Probe"] == "roundtrip 1700000000 abc123"
    assert parsed.get_content().strip() == "hello"


def test_null_sender_gets_a_from_header() -> None:
    assert b"\r\nFrom: <probe@probe.example.org>\r\n" in build("x", mail_from="")


def test_ends_with_crlf_dot_crlf() -> None:
    message = build("last line")
    assert message.endswith(b"\r\nlast line\r\n.\r\n")
    assert message.count(b"\r\n.\r\n") == 1


def test_line_ends_are_normalised_to_crlf() -> None:
    message = build("unix\nmac\rwindows\r\nend")
    assert b"\r\nunix\r\nmac\r\nwindows\r\nend\r\n.\r\n" in message
    assert message.replace(b"\r\n", b"").count(b"\n") == 0
    assert message.replace(b"\r\n", b"").count(b"\r") == 0


def test_dot_stuffing() -> None:
    message = build(".\n.hidden\n..two\nnot.first\n.")
    assert b"\r\n..\r\n..hidden\r\n...two\r\nnot.first\r\n..\r\n.\r\n" in message
    assert unstuff(message).endswith(b"\r\n.\r\n.hidden\r\n..two\r\nnot.first\r\n.\r\n")


def test_headers_end_before_the_body() -> None:
    head, _, body = build("body").partition(b"\r\n\r\n")
    assert head.startswith(b"Date: ")
    assert body == b"body\r\n.\r\n"


_body = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(body=_body)
def test_any_body_is_framed_safely(body: str) -> None:
    message = build(body)
    assert message.endswith(b"\r\n.\r\n")
    inner = message[: -len(b".\r\n")]
    # No line of the payload is a lone dot, and no bare CR or LF can end the DATA early.
    assert b"\r\n.\r\n" not in inner
    assert inner.replace(b"\r\n", b"").count(b"\n") == 0
    assert inner.replace(b"\r\n", b"").count(b"\r") == 0
    expected = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n") + "\r\n"
    assert unstuff(message).decode().endswith("\r\n\r\n" + expected)


def test_token_names_module_time_and_id() -> None:
    token = Token("round.trip-2", 1_700_000_000, "smtp-exporter.0011")
    assert Token.parse(str(token)) == token
    assert Token.parse(" round.trip-2 1700000000 smtp-exporter.0011\r\n") == token
    for value in ("", "roundtrip", "roundtrip 17x 1", "roundtrip 1 ", "a b c d", "roundtrip ١٢ x"):
        assert Token.parse(value) is None, value
