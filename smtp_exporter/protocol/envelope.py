"""What a sending MTA declares on MAIL FROM, and what it refuses to send (pure rules).

The ESMTP parameters of RFC 1870 (SIZE), 6152 (BODY=8BITMIME), 6531 (SMTPUTF8) and 8689
(REQUIRETLS), chosen from the server's post-TLS EHLO. Each rule either adds a parameter or
ends the probe with `expectation_failed` before MAIL is sent, where a real sender would not
send the message either (it would bounce or convert it).
"""

from __future__ import annotations

from typing import NamedTuple

from smtp_exporter.config.schema import SMTPUTF8, BodyType, Chunking, ModuleConfig, Pipelining
from smtp_exporter.model import Transaction
from smtp_exporter.protocol.commands import encode_command

Extensions = dict[str, tuple[str, ...]]


class Sender(NamedTuple):
    """What a module's mail transaction says whatever the server offers: worked out once per
    module (`CompiledModule`, probe/module.py), not again at every probe."""

    mail_from: str  # MAIL's argument before its parameters: FROM:<...>
    rcpt_lines: tuple[bytes, ...]  # each RCPT command, as sent
    smtputf8: str | None  # why SMTPUTF8 must be declared (for the failure message), or None


def compile_sender(module: ModuleConfig) -> Sender:
    """`module`'s `Sender`; CommandError for an address that would break the command line (the
    config loader refuses those first)."""
    return Sender(
        f"FROM:<{module.mail_from}>",
        tuple(encode_command("RCPT", f"TO:<{recipient}>") for recipient in module.rcpt_to),
        _needs_smtputf8(module),
    )


class Envelope(NamedTuple):
    """How the mail transaction goes: MAIL's parameters, and how commands and message are sent."""

    parameters: tuple[str, ...]  # after "MAIL FROM:<...>", in this order
    pipelined: bool  # MAIL, every RCPT and DATA in one write (RFC 2920 3.1)
    chunked: bool  # BDAT <size> LAST instead of DATA and the dotted message (RFC 3030)


class EnvelopeRefused(NamedTuple):
    """Why the transaction cannot start (reason expectation_failed, phase mail)."""

    message: str


def _is_ascii(text: str) -> bool:
    return text.isascii()


def has_8bit_content(module: ModuleConfig) -> bool:
    """Whether the probe message has 8-bit octets: a non-ASCII address (it is in the From and
    To headers), subject, header or body."""
    message = module.message
    texts = (module.mail_from, *module.rcpt_to, message.subject, message.body)
    headers = (text for header in message.headers for text in header)
    return not all(_is_ascii(text) for text in (*texts, *headers))


def _needs_smtputf8(module: ModuleConfig) -> str | None:
    """Why SMTPUTF8 is declared (for the failure message), or None. RFC 6531 3.4: a mail
    address or header with UTF-8 needs it; `smtputf8: required` always declares it."""
    if module.smtputf8 is SMTPUTF8.REQUIRED:
        return "smtputf8: required"
    addresses = (module.mail_from, *module.rcpt_to)
    if not all(_is_ascii(address) for address in addresses):
        return "a non-ASCII address"
    message = module.message
    header_texts = (message.subject, *(text for header in message.headers for text in header))
    if module.transaction is Transaction.MESSAGE and not all(_is_ascii(text) for text in header_texts):
        return "a non-ASCII header"
    return None


def message_size(message: bytes) -> int:
    """The message's size as RFC 1870 counts it: without dot-stuffing and the final CRLF.CRLF."""
    return len(message) - 3 - message.count(b"\r\n..")


def plan_envelope(
    module: ModuleConfig, sender: Sender, offered: Extensions, message: bytes | None, *, tls: bool
) -> Envelope | EnvelopeRefused:
    """The envelope for the server's offer (`offered`: its latest EHLO's keywords and
    parameters), or why a sender would not go on."""
    parameters: list[str] = []
    sending = message is not None and module.transaction is Transaction.MESSAGE

    pipelined = "PIPELINING" in offered and module.pipelining is not Pipelining.NEVER
    if module.pipelining is Pipelining.REQUIRED and not pipelined:
        return EnvelopeRefused("the server does not offer PIPELINING (pipelining: required)")

    if sending:
        assert message is not None
        size = message_size(message)
        if "SIZE" in offered:
            # RFC 1870 4: the server's maximum, 0 (or none) for no fixed limit.
            limit_text = offered["SIZE"][0] if offered["SIZE"] else "0"
            limit = int(limit_text) if limit_text.isdigit() else 0
            if limit and size > limit:
                return EnvelopeRefused(
                    f"the message ({size} bytes) is larger than the server's SIZE limit ({limit} bytes)"
                )
            if module.size_declaration:
                parameters.append(f"SIZE={size}")
        if module.body_type is BodyType.AUTO and not message.isascii():
            if "8BITMIME" not in offered:
                return EnvelopeRefused("the message has 8-bit content and the server does not offer 8BITMIME")
            parameters.append("BODY=8BITMIME")

    smtputf8 = sender.smtputf8
    if smtputf8 is not None:
        if "SMTPUTF8" not in offered:
            return EnvelopeRefused(f"the server does not offer SMTPUTF8, needed for {smtputf8}")
        parameters.append("SMTPUTF8")

    if module.requiretls:
        if not tls:
            return EnvelopeRefused("REQUIRETLS needs TLS, and the connection is not encrypted")
        if "REQUIRETLS" not in offered:
            return EnvelopeRefused("the server does not offer REQUIRETLS (requiretls: true)")
        parameters.append("REQUIRETLS")

    chunked = sending and module.chunking is Chunking.AUTO and "CHUNKING" in offered
    return Envelope(tuple(parameters), pipelined, chunked)
