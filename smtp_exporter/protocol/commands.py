"""Encoding what the client says: commands and AUTH payloads (RFC 5321, RFC 4954)."""

from __future__ import annotations

import base64
import hashlib
import hmac


class CommandError(ValueError):
    """An argument that would break the command line (CR, LF or NUL)."""


def validate_argument(value: str) -> str:
    """Refuse text that could inject a second command into the conversation."""
    if "\r" in value or "\n" in value or "\x00" in value:
        raise CommandError("must not contain CR, LF or NUL")
    return value


def encode_command(verb: str, argument: str | None = None) -> bytes:
    line = verb if argument is None else f"{verb} {validate_argument(argument)}"
    return line.encode("utf-8") + b"\r\n"


def auth_plain_initial(username: str, password: str) -> str:
    """The initial response of AUTH PLAIN (RFC 4616): authzid empty."""
    return base64.b64encode(f"\x00{username}\x00{password}".encode()).decode("ascii")


def auth_login_step(value: str) -> str:
    """One answer of AUTH LOGIN: the username, then the password, base64-encoded."""
    return base64.b64encode(value.encode()).decode("ascii")


def auth_cram_md5_response(challenge_b64: str, username: str, password: str) -> str:
    """The answer to a CRAM-MD5 challenge (RFC 2195)."""
    try:
        challenge = base64.b64decode(challenge_b64.strip(), validate=True)
    except ValueError as exc:
        raise CommandError("CRAM-MD5 challenge is not base64") from exc
    digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
    return base64.b64encode(f"{username} {digest}".encode()).decode("ascii")


def auth_xoauth2_initial(username: str, token: str) -> str:
    """The initial response of XOAUTH2 (Google's and Microsoft's SASL mechanism)."""
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")


def auth_oauthbearer_initial(username: str, token: str) -> str:
    """The initial response of OAUTHBEARER (RFC 7628 3.1): the GS2 header with the username as
    authzid (RFC 5801 saslname: "," and "=" escaped), then the token. The optional host and
    port pairs are not sent: the providers do not require them, and a probe through a proxy or
    to an address would name the wrong host."""
    saslname = username.replace("=", "=3D").replace(",", "=2C")
    return base64.b64encode(f"n,a={saslname},\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")
