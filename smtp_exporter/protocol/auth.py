"""The client side of one AUTH exchange (RFC 4954): which mechanism, what to say, what to hide.

Pure: the session (protocol/session.py) sends what this says and records the phase.
"""

from __future__ import annotations

from smtp_exporter.config.schema import AuthConfig, AuthMechanism
from smtp_exporter.protocol.commands import (
    auth_cram_md5_response,
    auth_login_step,
    auth_plain_initial,
    encode_command,
)
from smtp_exporter.protocol.reply import Reply

REDACTED = "<redacted>"
# Preferred first: CRAM-MD5 never sends the password, even inside TLS.
AUTO_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")


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
    server may quote what it was sent)."""

    __slots__ = ("_answers", "_password", "_username", "first_line", "first_shown", "mechanism", "secrets")

    def __init__(self, auth: AuthConfig, mechanism: str) -> None:
        self.mechanism = mechanism
        self._username = auth.username
        self._password = password = auth.password.reveal()
        plain = auth_plain_initial(auth.username, password)
        self.secrets = tuple(s for s in (password, plain, auth_login_step(password)) if s)
        self.first_shown: str | None = None  # what the transcript shows of the first line
        if mechanism == "PLAIN":
            self.first_line = encode_command("AUTH", "PLAIN " + plain)
            self.first_shown = f"AUTH PLAIN {REDACTED}"
            self._answers: list[str] = []
        else:
            self.first_line = encode_command("AUTH", mechanism)
            self._answers = [auth.username, password] if mechanism == "LOGIN" else [""]

    def answer(self, challenge: Reply) -> bytes | None:
        """The line answering a 334 challenge; None when there is nothing left to say (the
        credentials were not accepted). Raises CommandError for a challenge it cannot read."""
        if not self._answers:
            return None
        step = self._answers.pop(0)
        if self.mechanism == "LOGIN":
            answer = auth_login_step(step)
        else:
            answer = auth_cram_md5_response(challenge.text, self._username, self._password)
        self.secrets = (*self.secrets, answer)
        return answer.encode("ascii") + b"\r\n"

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
