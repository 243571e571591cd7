"""The probe message: headers, body, dot-stuffing and the final <CRLF>.<CRLF>."""

from __future__ import annotations

import email.utils
from functools import lru_cache
from typing import NamedTuple

# The header that names a probe message: the delivery check finds exactly its own message by it,
# and recognises its module's leftovers (see `Token`).
TOKEN_HEADER = "X-SMTP-Exporter-Probe"


class Token(NamedTuple):
    """What the probe header says: `<module> <unix time> <id>`. The id is also the Message-ID's
    local part. The module and the time let an exporter clean up its own module's leftovers
    (never a younger message, which another exporter sharing the mailbox may still wait for)."""

    module: str
    timestamp: int
    unique: str

    def __str__(self) -> str:
        return f"{self.module} {self.timestamp} {self.unique}"

    def message_id(self, domain: str) -> str:
        """The Message-ID of the message carrying this token, sent from `domain`."""
        return f"<{self.unique}@{domain}>"

    @classmethod
    def parse(cls, value: str) -> Token | None:
        """The token of a header value, or None when it is not one this exporter writes."""
        parts = value.strip().split(" ")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit() or not parts[2]:
            return None
        return cls(parts[0], int(parts[1]), parts[2])


def build_message(
    *,
    mail_from: str,
    rcpt_to: tuple[str, ...],
    subject: str,
    body: str,
    headers: tuple[tuple[str, str], ...],
    domain: str,
    token: Token,
) -> bytes:
    """The DATA payload, ready to send: CRLF line ends, dot-stuffed, ending in CRLF.CRLF. It
    carries the probe's `token` in `TOKEN_HEADER`, its time as Date, its id in the Message-ID."""
    message_id = token.message_id(domain)
    head = f"Date: {_date(token.timestamp)}\r\nMessage-ID: {message_id}\r\n{TOKEN_HEADER}: {token}\r\n"
    return head.encode("utf-8") + _rest(mail_from, rcpt_to, subject, body, headers, domain)


@lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date header's value, the same for every probe started within one second: formatting
    it costs about 20,000 instructions."""
    return email.utils.formatdate(second, localtime=False)


@lru_cache(maxsize=256)
def _rest(
    mail_from: str,
    rcpt_to: tuple[str, ...],
    subject: str,
    body: str,
    headers: tuple[tuple[str, str], ...],
    domain: str,
) -> bytes:
    """Everything after Message-ID: the same at every probe of a module, and building it costs
    about 40,000 instructions, remembering it about 2,000. (Date and Message-ID start with
    their names, so only these lines can need dot-stuffing.)"""
    lines = [
        f"From: <{mail_from}>" if mail_from else f"From: <probe@{domain}>",
        "To: " + ", ".join(f"<{r}>" for r in rcpt_to),
        f"Subject: {subject}",
        *(f"{name}: {value}" for name, value in headers),
        "",
        *body.replace("\r\n", "\n").replace("\r", "\n").split("\n"),
    ]
    stuffed = ("." + line if line.startswith(".") else line for line in lines)
    return ("\r\n".join(stuffed) + "\r\n.\r\n").encode("utf-8")
