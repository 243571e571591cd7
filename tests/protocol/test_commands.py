"""Command encoding and AUTH payloads (RFC 5321, RFC 4954, RFC 4616, RFC 2195)."""

from __future__ import annotations

import base64

import pytest

from smtp_exporter.protocol.commands import (
    CommandError,
    auth_cram_md5_response,
    auth_login_step,
    auth_plain_initial,
    encode_command,
    validate_argument,
)


def test_commands_end_in_crlf() -> None:
    assert encode_command("EHLO", "probe.example.org") == b"EHLO probe.example.org\r\n"
    assert encode_command("QUIT") == b"QUIT\r\n"
    assert encode_command("MAIL", "FROM:<>") == b"MAIL FROM:<>\r\n"
    assert encode_command("RCPT", "TO:<dépôt@example.org>") == "RCPT TO:<dépôt@example.org>\r\n".encode()


@pytest.mark.parametrize("bad", ["a\r\nRSET", "a\nb", "a\rb", "a\x00b", "\n", "\r"])
def test_injection_is_refused(bad: str) -> None:
    with pytest.raises(CommandError, match="CR, LF or NUL"):
        encode_command("MAIL", f"FROM:<{bad}>")
    with pytest.raises(CommandError):
        validate_argument(bad)


def test_validate_argument_returns_clean_text() -> None:
    assert validate_argument("TO:<a@b> NOTIFY=NEVER") == "TO:<a@b> NOTIFY=NEVER"


def test_auth_plain() -> None:
    # RFC 4616 section 4: "\0tim\0tanstaaftanstaaf" (empty authzid)
    assert auth_plain_initial("tim", "tanstaaftanstaaf") == "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
    assert base64.b64decode(auth_plain_initial("ü", "pässword")) == "\x00ü\x00pässword".encode()


def test_auth_login() -> None:
    assert auth_login_step("tim") == "dGlt"
    assert auth_login_step("tanstaaftanstaaf") == "dGFuc3RhYWZ0YW5zdGFhZg=="


def test_cram_md5_rfc_2195_example() -> None:
    challenge = base64.b64encode(b"<1896.697170952@postoffice.reston.mci.net>").decode()
    assert challenge == "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    response = auth_cram_md5_response(challenge, "tim", "tanstaaftanstaaf")
    assert response == "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
    assert base64.b64decode(response) == b"tim b913a602c7eda7a495b4e6e7334d3890"
    # Surrounding whitespace from the 334 line is tolerated.
    assert auth_cram_md5_response(f" {challenge} ", "tim", "tanstaaftanstaaf") == response


@pytest.mark.parametrize("challenge", ["not base64!", "abc", "PDE4OTY*"])
def test_cram_md5_bad_challenge(challenge: str) -> None:
    with pytest.raises(CommandError, match="not base64"):
        auth_cram_md5_response(challenge, "tim", "x")
