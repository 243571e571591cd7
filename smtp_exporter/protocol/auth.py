"""The client side of one AUTH exchange (RFC 4954): which mechanism, what to say, what to hide.

Pure: the session (protocol/session.py) sends what this says and records the phase.
"""

from __future__ import annotations

import base64
import json

from smtp_exporter.config.schema import AuthConfig, AuthMechanism
from smtp_exporter.protocol.commands import (
    auth_cram_md5_response,
    auth_login_step,
    auth_oauthbearer_initial,
    auth_plain_initial,
    auth_xoauth2_initial,
    encode_command,
)
from smtp_exporter.protocol.reply import Reply

REDACTED = "<redacted>"
# Preferred first: CRAM-MD5 never sends the password, even inside TLS.
AUTO_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")
# What answers an OAuth server's error challenge, so that it sends its final 535: RFC 7628 3.2.3
# requires a single %x01 (base64 "AQ=="); Google's and Microsoft's XOAUTH2 documents an empty line.
_OAUTH_ERROR_ANSWERS = {"XOAUTH2": "", "OAUTHBEARER": "AQ=="}
_OAUTH_INITIAL = {"XOAUTH2": auth_xoauth2_initial, "OAUTHBEARER": auth_oauthbearer_initial}
MAX_CHALLENGE_SHOWN = 300  # characters of a decoded error challenge in the failure message


def choose_mechanism(auth: AuthConfig, offered: tuple[str, ...]) -> str | None:
    """The mechanism to use given the server's AUTH parameters; None when the server offers
    none that fits (an explicit mechanism is used only when offered, so that credentials never
    go to a server that did not ask for them: RFC 4954 4, and swaks refuses likewise)."""
    server_mechanisms = {m.upper() for m in offered}
    if auth.mechanism is not AuthMechanism.AUTO:
        mechanism = auth.mechanism.value
        return mechanism if mechanism in server_mechanisms else None
    return next((m for m in AUTO_MECHANISMS if m in server_mechanisms), None)


def no_mechanism_message(auth: AuthConfig, offered: tuple[str, ...]) -> str:
    """Why `choose_mechanism` found nothing, for the failure message."""
    if not offered:
        return "the server offers no AUTH mechanism"
    if auth.mechanism is AuthMechanism.AUTO:
        return f"the server offers no AUTH mechanism this probe speaks (offers: {' '.join(offered)})"
    return f"the server does not offer AUTH {auth.mechanism.value} (offers: {' '.join(offered)})"


class AuthExchange:
    """What the client says in one AUTH exchange, and the secrets no kept reply may show (a
    server may quote what it was sent). `token`: the OAuth bearer token, read by the driver for
    this probe (an OAuth mechanism only)."""

    __slots__ = (
        "_answers",
        "_password",
        "_username",
        "error_challenge",
        "first_line",
        "first_shown",
        "mechanism",
        "secrets",
    )

    def __init__(self, auth: AuthConfig, mechanism: str, token: str | None = None) -> None:
        self.mechanism = mechanism
        self._username = auth.username
        self._password = password = auth.password.reveal()
        self.first_shown: str | None = None  # what the transcript shows of the first line
        self.error_challenge: str | None = None  # an OAuth server's, decoded, once answered
        if mechanism in _OAUTH_INITIAL:
            assert token, "an OAuth mechanism needs the token the driver read"
            initial = _OAUTH_INITIAL[mechanism](auth.username, token)
            self.secrets: tuple[str, ...] = (token, initial)
            self.first_line = encode_command("AUTH", f"{mechanism} {initial}")
            self.first_shown = f"AUTH {mechanism} {REDACTED}"
            self._answers: list[str] = [_OAUTH_ERROR_ANSWERS[mechanism]]
            return
        plain = auth_plain_initial(auth.username, password)
        self.secrets = tuple(s for s in (password, plain, auth_login_step(password)) if s)
        if mechanism == "PLAIN":
            self.first_line = encode_command("AUTH", "PLAIN " + plain)
            self.first_shown = f"AUTH PLAIN {REDACTED}"
            self._answers = []
        else:
            self.first_line = encode_command("AUTH", mechanism)
            self._answers = [auth.username, password] if mechanism == "LOGIN" else [""]

    def answer(self, challenge: Reply) -> tuple[bytes, str] | None:
        """The line answering a 334 challenge and what the transcript shows of it; None when
        there is nothing left to say (the credentials were not accepted). Raises CommandError
        for a challenge it cannot read."""
        if not self._answers:
            return None
        step = self._answers.pop(0)
        if self.mechanism in _OAUTH_ERROR_ANSWERS:
            # After the initial response, a 334 is the server's error challenge: the token was
            # refused, and the answer only lets the server end the exchange with its 535.
            self.error_challenge = self._decoded_challenge(challenge.text)
            return step.encode("ascii") + b"\r\n", step or "<empty line>"
        if self.mechanism == "LOGIN":
            answer = auth_login_step(step)
        else:
            answer = auth_cram_md5_response(challenge.text, self._username, self._password)
        self.secrets = (*self.secrets, answer)
        return answer.encode("ascii") + b"\r\n", REDACTED

    def failure_message(self, reply: Reply) -> str:
        """Why the exchange failed with `reply`, with an OAuth server's error challenge."""
        message = f"unexpected reply to auth: {reply.summary()}"
        if self.error_challenge is not None:
            message += f" (error challenge: {self.error_challenge})"
        return message

    def _decoded_challenge(self, text: str) -> str:
        """RFC 7628 3.2.2: base64 of a JSON object such as {"status":"invalid_token",...}; shown
        compact and ASCII-only (one line), with any secret the server quotes redacted."""
        try:
            document = json.loads(base64.b64decode(text.strip(), validate=True).decode("utf-8"))
            shown = json.dumps(document, ensure_ascii=True, separators=(",", ":"))
        except (ValueError, RecursionError):  # not base64, not UTF-8, not JSON, or nested too deep
            shown = "not base64 JSON: " + text.encode("ascii", "backslashreplace").decode("ascii")
        for secret in self.secrets:
            shown = shown.replace(secret, REDACTED)
        if len(shown) > MAX_CHALLENGE_SHOWN:
            shown = shown[:MAX_CHALLENGE_SHOWN] + "..."
        return shown

    def redact(self, reply: Reply) -> Reply:
        secrets = self.secrets
        if not any(secret in line for line in reply.lines for secret in secrets):
            return reply
        lines = []
        for line in reply.lines:
            for secret in secrets:
                line = line.replace(secret, REDACTED)
            lines.append(line)
        return Reply(reply.code, tuple(lines))
