"""The probe message: headers, body, dot-stuffing and the final <CRLF>.<CRLF>."""

from __future__ import annotations

import email.utils


def build_message(
    *,
    mail_from: str,
    rcpt_to: tuple[str, ...],
    subject: str,
    body: str,
    headers: tuple[tuple[str, str], ...],
    domain: str,
    timestamp: float,
    unique: str,
) -> bytes:
    """The DATA payload, ready to send: CRLF line ends, dot-stuffed, ending in CRLF.CRLF."""
    lines = [
        f"Date: {email.utils.formatdate(int(timestamp), localtime=False)}",
        f"Message-ID: <{unique}@{domain}>",
        f"From: <{mail_from}>" if mail_from else f"From: <probe@{domain}>",
        "To: " + ", ".join(f"<{r}>" for r in rcpt_to),
        f"Subject: {subject}",
        *(f"{name}: {value}" for name, value in headers),
        "",
        *body.replace("\r\n", "\n").replace("\r", "\n").split("\n"),
    ]
    stuffed = ("." + line if line.startswith(".") else line for line in lines)
    return ("\r\n".join(stuffed) + "\r\n.\r\n").encode("utf-8")
