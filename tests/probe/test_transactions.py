"""How far a conversation goes (transaction none/envelope/message) and what the server receives."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from decimal import Decimal
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from smtp_exporter.config.schema import MessageConfig
from smtp_exporter.model import Phase, Transaction
from smtp_exporter.probe import Prober
from tests.probe.common import EHLO, compiled, describe, module, names
from tests.servers.aiosmtpd_server import AiosmtpdServer

PHASES = {
    Transaction.NONE: ["connect", "banner", "ehlo", "quit"],
    Transaction.ENVELOPE: ["connect", "banner", "ehlo", "mail", "rcpt", "rset", "quit"],
    Transaction.MESSAGE: ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message", "quit"],
}
VERBS = {
    Transaction.NONE: [b"EHLO", b"QUIT"],
    Transaction.ENVELOPE: [b"EHLO", b"MAIL", b"RCPT", b"RSET", b"QUIT"],
    Transaction.MESSAGE: [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT"],
}


@pytest.mark.parametrize("transaction", list(Transaction))
async def test_phases_of_each_transaction(smtp_server: AiosmtpdServer, transaction: Transaction) -> None:
    result = await Prober().probe(
        *compiled(
            smtp_server.target,
            "m",
            module(port=smtp_server.port, transaction=transaction, rcpt_to=("postmaster@mail.test",)),
        ),
    )
    assert result.success, describe(result)
    assert names(result) == PHASES[transaction]
    codes = [p.reply_code for p in result.phases]
    expected_codes = {"connect": None, "banner": 220, "data": 354, "quit": 221}
    assert codes == [expected_codes.get(name, 250) for name in PHASES[transaction]]
    assert all(p.duration_seconds >= 0 for p in result.phases)
    assert sum(p.duration_seconds for p in result.phases) <= result.duration_seconds
    # Durations are whole nanoseconds, so their shortest decimal form (the exposition's) is too.
    for seconds in (result.duration_seconds, *(p.duration_seconds for p in result.phases)):
        assert Decimal(repr(seconds)) == Decimal(round(seconds * 1e9)) / 10**9, seconds
    # What the server saw: exactly these commands, each ended by CRLF, then the client closed.
    assert await smtp_server.wait_closed()
    (connection,) = smtp_server.connections
    received = bytes(connection.received)
    assert received.count(b"\n") == received.count(b"\r\n")
    commands = [line.split(b" ", 1)[0] for line in received.split(b"\r\n") if line[:4].isupper()]
    if transaction is Transaction.MESSAGE:
        commands = [c for c in commands if c in VERBS[transaction]]  # drop header lines
    assert commands == VERBS[transaction]
    assert len(smtp_server.messages) == (1 if transaction is Transaction.MESSAGE else 0)
    # The transcript says what was sent, command by command; the message only by its size.
    sent = [line.text for line in result.transcript if line.direction == "C"]
    assert [text.split(" ", 1)[0].encode() for text in sent if text[:1] != "<"] == VERBS[transaction]
    if transaction is Transaction.MESSAGE:
        payload = received.split(b"DATA\r\n", 1)[1].split(b"QUIT\r\n", 1)[0]
        assert [text for text in sent if text[:1] == "<"] == [f"<message: {len(payload)} bytes>"]


async def test_server_facts_from_banner_and_ehlo(smtp_server_factory: Callable[..., AiosmtpdServer]) -> None:
    server = smtp_server_factory(hostname="mx.example.test", extra_extensions=("DSN", "X-TEST a b"))
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port)))
    assert result.success, describe(result)
    assert result.server.banner == "mx.example.test ESMTP aiosmtpd test server"
    assert result.server.ehlo_hostname == "mx.example.test"
    extensions = dict(result.server.extensions)
    assert extensions["SIZE"] == ("10485760",)
    assert extensions["X-TEST"] == ("a", "b")
    assert "DSN" in extensions and "8BITMIME" in extensions
    assert result.server.max_message_size == 10485760
    assert result.address is not None
    assert (result.address.ip, result.address.port, result.address.family) == ("127.0.0.1", server.port, 4)
    assert result.mx is None
    assert result.tls is None


async def test_message_as_received(smtp_server: AiosmtpdServer) -> None:
    body = "first line\n.\n..x\n.leading dot\nlast line"
    before = time.time()
    result = await Prober().probe(
        *compiled(
            smtp_server.target,
            "m",
            module(
                "smtp_full",
                port=smtp_server.port,
                mail_from="probe@probe.test",
                rcpt_to=("one@mail.test", "two@mail.test", "three@mail.test"),
                message=MessageConfig(
                    subject="probe subject",
                    body=body,
                    headers=(("X-Probe-Id", "42"), ("X-Team", "mail ops")),
                ),
            ),
        ),
    )
    assert result.success, describe(result)
    (message,) = await smtp_server.wait_messages(1)
    assert message.mail_from == "probe@probe.test"
    assert message.rcpt_tos == ("one@mail.test", "two@mail.test", "three@mail.test")
    assert message.helo == EHLO
    assert message.accepted

    parsed = message_from_bytes(message.content, policy=default_policy)
    sent_at = email.utils.parsedate_to_datetime(parsed["Date"]).timestamp()
    assert before - 2 <= sent_at <= time.time() + 2
    assert parsed["Message-ID"].startswith("<") and parsed["Message-ID"].endswith(f"@{EHLO}>")
    # The token names the module, the send time and the Message-ID's id.
    module_name, stamp, unique = parsed["X-SMTP-Exporter-Probe"].split(" ")
    assert module_name == result.module and before - 2 <= int(stamp) <= time.time() + 2
    assert parsed["Message-ID"] == f"<{unique}@{EHLO}>"
    assert parsed["From"] == "probe@probe.test"
    assert [a.addr_spec for a in parsed["To"].addresses] == [
        "one@mail.test",
        "two@mail.test",
        "three@mail.test",
    ]
    assert parsed["Subject"] == "probe subject"
    assert parsed["X-Probe-Id"] == "42"
    assert parsed["X-Team"] == "mail ops"
    # The server removed the dot-stuffing: the body lines are back as configured.
    assert message.content.split(b"\r\n\r\n", 1)[1] == body.replace("\n", "\r\n").encode() + b"\r\n"
    # On the wire they were dot-stuffed, and the message ended with CRLF.CRLF.
    wire = bytes(smtp_server.connections[0].received)
    assert b"\r\nfirst line\r\n..\r\n...x\r\n..leading dot\r\nlast line\r\n.\r\n" in wire


async def test_message_ids_are_unique(smtp_server: AiosmtpdServer) -> None:
    prober = Prober()
    full = module("smtp_full", port=smtp_server.port)
    for _ in range(3):
        result = await prober.probe(*compiled(smtp_server.target, "m", full))
        assert result.success, describe(result)
    messages = await smtp_server.wait_messages(3)
    ids = {message_from_bytes(m.content)["Message-ID"] for m in messages}
    assert len(ids) == 3


async def test_null_reverse_path(smtp_server: AiosmtpdServer) -> None:
    """No mail_from: MAIL FROM:<> (a bounce can never loop), with a From header still present."""
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module("smtp_full", port=smtp_server.port))
    )
    assert result.success, describe(result)
    assert b"MAIL FROM:<> SIZE=" in bytes(smtp_server.connections[0].received)  # aiosmtpd offers SIZE
    (message,) = smtp_server.messages
    assert message.mail_from == "<>"
    assert message_from_bytes(message.content)["From"] == f"<probe@{EHLO}>"


async def test_phase_timings_add_up(smtp_server: AiosmtpdServer) -> None:
    """Each phase's duration lies within the probe's; transcript offsets are ordered."""
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module("smtp_full", port=smtp_server.port))
    )
    assert result.success, describe(result)
    assert 0 < result.duration_seconds < 5
    offsets = [line.offset_seconds for line in result.transcript]
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0 and offsets[-1] <= result.duration_seconds
    message = result.phase(Phase.MESSAGE)
    assert message is not None and message.reply_code == 250 and message.enhanced_status == "2.0.0"
    assert abs(result.start_timestamp - time.time()) < 10
