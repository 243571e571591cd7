"""Issue 17 through the asyncio driver: scripted peers for broken pipelining replies and for
REQUIRETLS, aiosmtpd for SMTPUTF8, 8BITMIME and SIZE (it offers those three, not PIPELINING),
and smtp_probe_pipelined / JSON "pipelined" for the path measured. (The rules themselves are
tests/protocol/test_pipelining.py and test_envelope.py; real Postfix is test_postfix_modern.py.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from smtp_exporter.config.schema import MessageConfig, Pipelining, StartTLS
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, Phase, ProbeResult
from smtp_exporter.presentation import probe_json
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module, names, trusting
from tests.servers import scripted
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.scripted import ExpectLine, ScriptedServer, Send
from tests.servers.tls import TestCA

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]


async def _probe(target: str, port: int, base: str = "smtp_full", **changes: object) -> ProbeResult:
    settings = module(base, port=port, **changes)  # type: ignore[arg-type]
    return await Prober().probe(*compiled(target, "m", settings))


def _failed(result: ProbeResult, phase: Phase, reason: FailureReason) -> None:
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (phase, reason), describe(result)


def _pipelined_metric(result: ProbeResult) -> str:
    text = render_probe_result(result, openmetrics=False).decode()
    (line,) = [line for line in text.splitlines() if line.startswith("smtp_probe_pipelined ")]
    return line


# Broken pipelining replies (scripted peers; the default EHLO reply offers PIPELINING)


def _batch_then(replies: bytes) -> list[scripted.Step]:
    """A server that reads the whole batch (MAIL, RCPT, DATA), then sends `replies` at once."""
    return [
        Send(scripted.BANNER),
        ExpectLine(),
        Send(scripted.EHLO_REPLY),
        ExpectLine(),
        ExpectLine(),
        ExpectLine(),
        Send(replies),
        ExpectLine(),  # whatever comes next (nothing should: the connection just closes)
    ]


async def test_a_server_answering_line_by_line(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(scripted.minimal_conversation())
    result = await _probe(server.target, server.port, rcpt_to=("a@mail.test", "b@mail.test"))
    assert result.success, describe(result)
    assert result.pipelined
    assert names(result) == ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message", "quit"]
    lines = server.connections[0].lines
    assert lines[1].startswith(b"MAIL FROM:<> SIZE=")
    assert lines[2:5] == [b"RCPT TO:<a@mail.test>\r\n", b"RCPT TO:<b@mail.test>\r\n", b"DATA\r\n"]
    assert _pipelined_metric(result) == "smtp_probe_pipelined 1"
    assert probe_json(result)["pipelined"] is True


@pytest.mark.parametrize(
    ("replies", "phase", "text"),
    [
        (b"250 2.1.0 Ok\r\n354 go ahead\r\n", Phase.RCPT, "354 where the reply to rcpt belongs"),
        (b"354 go ahead\r\n", Phase.MAIL, "354 where the reply to mail belongs"),
    ],
    ids=["rcpt_reply_missing", "mail_and_rcpt_replies_missing"],
)
async def test_a_broken_batch_is_a_protocol_error(
    scripted_server: ScriptedFactory, replies: bytes, phase: Phase, text: str
) -> None:
    server = await scripted_server(_batch_then(replies))
    result = await _probe(server.target, server.port)
    _failed(result, phase, FailureReason.PROTOCOL_ERROR)
    assert result.failure is not None and text in result.failure.message
    assert result.pipelined
    assert await server.wait_closed(5)
    (connection,) = server.connections
    # Nothing after the batch: no message and no QUIT (the server may be reading a message).
    assert len(connection.lines) == 4 and connection.client_closed
    assert _pipelined_metric(result) == "smtp_probe_pipelined 1"
    assert probe_json(result)["pipelined"] is True


async def test_a_reply_missing_and_then_silence_times_out_in_that_phase(
    scripted_server: ScriptedFactory,
) -> None:
    """A proxy that drops the rest of a batch: only MAIL's reply comes. The probe cannot tell a
    dropped reply from a slow one, so the deadline ends it, in the phase still unanswered."""
    server = await scripted_server(_batch_then(b"250 2.1.0 Ok\r\n"))
    result = await _probe(server.target, server.port, timeout=1.0)
    _failed(result, Phase.RCPT, FailureReason.TIMEOUT)


async def test_pipelining_required_but_not_offered(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(scripted.minimal_conversation(EHLO=b"250-mail.test\r\n250 8BITMIME\r\n"))
    result = await _probe(server.target, server.port, pipelining=Pipelining.REQUIRED)
    _failed(result, Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert not any(line.startswith(b"MAIL") for line in server.connections[0].lines)
    assert _pipelined_metric(result) == "smtp_probe_pipelined 0"
    assert probe_json(result)["pipelined"] is False


# REQUIRETLS (scripted: no server in the test tools implements RFC 8689)

EHLO_REQUIRETLS = b"250-mail.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 REQUIRETLS\r\n"


def _tls_server(tls_ca: TestCA, ehlo_tls: bytes) -> list[scripted.Step]:
    context = tls_ca.server_cert.server_context()
    return scripted.starttls_conversation(context, EHLO=ehlo_tls)


async def test_requiretls_over_starttls(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(_tls_server(tls_ca, EHLO_REQUIRETLS))
    result = await _probe(
        server.target,
        server.port,
        starttls=StartTLS.REQUIRED,
        requiretls=True,
        tls_config=trusting(tls_ca),
    )
    assert result.success, describe(result)
    (mail,) = [line for line in server.connections[0].lines if line.startswith(b"MAIL")]
    assert mail.endswith(b" REQUIRETLS\r\n") and server.connections[0].tls
    assert any(
        t.text.startswith("MAIL FROM:<> SIZE=") and t.text.endswith(" REQUIRETLS") for t in result.transcript
    )


async def test_requiretls_not_offered_inside_tls(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(_tls_server(tls_ca, scripted.EHLO_REPLY))
    result = await _probe(
        server.target, server.port, starttls=StartTLS.REQUIRED, requiretls=True, tls_config=trusting(tls_ca)
    )
    _failed(result, Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert result.failure is not None and "does not offer REQUIRETLS" in result.failure.message
    assert not any(line.startswith(b"MAIL") for line in server.connections[0].lines)


async def test_requiretls_without_starttls_offered(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(scripted.minimal_conversation(EHLO=EHLO_REQUIRETLS))
    result = await _probe(server.target, server.port, requiretls=True)  # starttls: auto
    _failed(result, Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert result.failure is not None and "REQUIRETLS needs TLS" in result.failure.message
    assert not any(line.startswith(b"MAIL") for line in server.connections[0].lines)
    assert result.tls is None


# aiosmtpd: SMTPUTF8, 8BITMIME, SIZE

JOERG = "jörg@example.org"


async def test_smtputf8_address_to_aiosmtpd(smtp_server: AiosmtpdServer) -> None:
    result = await _probe(smtp_server.target, smtp_server.port, mail_from=JOERG, rcpt_to=("grüße@mail.test",))
    assert result.success, describe(result)
    (message,) = smtp_server.messages
    assert message.mail_from == JOERG and message.rcpt_tos == ("grüße@mail.test",)
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(message.mail_options)
    assert f"From: <{JOERG}>".encode() in message.content
    assert not result.pipelined  # aiosmtpd does not offer PIPELINING
    assert _pipelined_metric(result) == "smtp_probe_pipelined 0"


async def test_smtputf8_address_to_an_ascii_only_aiosmtpd(
    smtp_server_factory: Callable[..., AiosmtpdServer],
) -> None:
    server = smtp_server_factory(smtputf8=False)
    result = await _probe(server.target, server.port, rcpt_to=(JOERG,))
    _failed(result, Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert "SMTPUTF8" not in dict(result.server.extensions)
    assert await server.wait_closed(5)
    received = bytes(server.connections[0].received)
    assert b"MAIL" not in received and received.isascii()


async def test_8bitmime_body_to_aiosmtpd(smtp_server: AiosmtpdServer) -> None:
    result = await _probe(smtp_server.target, smtp_server.port, message=MessageConfig(body="Grüße aus Köln"))
    assert result.success, describe(result)
    (message,) = smtp_server.messages
    assert "BODY=8BITMIME" in message.mail_options and "SMTPUTF8" not in message.mail_options
    assert "Grüße aus Köln".encode() in message.content


async def test_size_declared_to_aiosmtpd(smtp_server: AiosmtpdServer) -> None:
    result = await _probe(smtp_server.target, smtp_server.port, message=MessageConfig(body=".dotted\nline"))
    assert result.success, describe(result)
    (message,) = smtp_server.messages
    (size,) = [option for option in message.mail_options if option.startswith("SIZE=")]
    assert int(size.removeprefix("SIZE=")) == len(message.content)  # as received, undotted


async def test_a_message_over_aiosmtpds_limit_is_not_sent(
    smtp_server_factory: Callable[..., AiosmtpdServer],
) -> None:
    server = smtp_server_factory(data_size_limit=100)
    result = await _probe(server.target, server.port)
    _failed(result, Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert (
        result.failure is not None
        and "larger than the server's SIZE limit (100 bytes)" in result.failure.message
    )
    assert await server.wait_closed(5)
    assert b"MAIL" not in bytes(server.connections[0].received) and not server.messages
