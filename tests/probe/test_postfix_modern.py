"""What a modern sender does, against a real Postfix smtpd (issue 17): PIPELINING under
`smtpd_forbid_unauth_pipelining = yes`, SIZE against `message_size_limit`, SMTPUTF8
(`smtputf8_enable`), 8BITMIME and CHUNKING (Postfix offers both).

Each accepted conversation is checked in Postfix's own log: its per-session command counts on
the "disconnect from" line (`bdat=1` instead of `data=1` when chunked), and no complaint
("improper command pipelining", "lost connection", "protocol error"). One test shows the log
check can fail: a client that sends the message before DATA's 354 is logged, and cut off.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable

import pytest

from smtp_exporter.config.schema import SMTPUTF8, Chunking, MessageConfig, Pipelining
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, Phase, ProbeResult
from smtp_exporter.presentation import probe_json
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module, names
from tests.servers.postfix_smtpd import PostfixSmtpd

# Every message is accepted and thrown away (outbound delivery is an error: transport otherwise).
ACCEPT = {"default_transport": "discard:", "relay_transport": "discard:"}
FORBID = {"smtpd_forbid_unauth_pipelining": "yes"}
COMPLAINTS = re.compile(r"improper command pipelining|lost connection|protocol error|warning: .*smtpd", re.I)
RCPT = ("probe@example.org",)


async def _probe(postfix: PostfixSmtpd, **changes: object) -> ProbeResult:
    settings = module("smtp_full", port=postfix.port, **{"rcpt_to": RCPT, **changes})
    return await Prober().probe(*compiled(postfix.target, "m", settings))


def _session_log(postfix: PostfixSmtpd, counts: str, *, sessions: int = 1) -> str:
    """Postfix's log once `sessions` sessions ended with exactly these command counts; no
    complaint in it."""
    line = r"disconnect from localhost\[127\.0\.0\.1\] " + re.escape(counts) + r"\n"
    postfix.wait_log("(?s)" + ".*".join([line] * sessions))
    log = postfix.log()
    assert COMPLAINTS.search(log) is None, log
    return log


def _transcript(result: ProbeResult) -> list[str]:
    return [f"{t.direction} {t.text}" for t in result.transcript]


async def test_a_pipelined_batch_is_accepted_by_forbid_unauth_pipelining(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID)
    result = await _probe(postfix, rcpt_to=("one@example.org", "two@example.org"))
    assert result.success, describe(result)
    assert result.pipelined
    assert dict(result.server.extensions).keys() >= {"PIPELINING", "SIZE", "8BITMIME", "CHUNKING", "SMTPUTF8"}
    assert names(result)[-5:] == ["mail", "rcpt", "data", "message", "quit"]
    # The batch went out in one write: its four lines carry one time.
    batch = [
        t for t in result.transcript if t.direction == "C" and t.text.startswith(("MAIL", "RCPT", "DATA"))
    ]
    assert len(batch) == 4 and len({t.offset_seconds for t in batch}) == 1, describe(result)
    assert "* PIPELINING: MAIL, 2 RCPT and DATA in one write" in _transcript(result)
    assert any(t.startswith("C MAIL FROM:<> SIZE=") for t in _transcript(result))
    _session_log(postfix, "ehlo=1 mail=1 rcpt=2 data=1 quit=1 commands=6")
    # The metric and the JSON say which path was measured.
    assert "smtp_probe_pipelined 1\n" in render_probe_result(result, openmetrics=False).decode()
    assert json.loads(json.dumps(probe_json(result)))["pipelined"] is True


async def test_pipelining_never_talks_one_command_at_a_time(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID)
    result = await _probe(postfix, pipelining=Pipelining.NEVER)
    assert result.success, describe(result)
    assert not result.pipelined
    assert len({t.offset_seconds for t in result.transcript if t.direction == "C"}) == 6  # EHLO ... QUIT
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
    assert "smtp_probe_pipelined 0\n" in render_probe_result(result, openmetrics=False).decode()
    assert probe_json(result)["pipelined"] is False


async def test_pipelining_required_against_a_postfix_that_does_not_offer_it(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"smtpd_discard_ehlo_keywords": "pipelining"})
    required = await _probe(postfix, pipelining=Pipelining.REQUIRED)
    assert required.failure is not None, describe(required)
    assert (required.failure.phase, required.failure.reason) == (Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert "PIPELINING" not in dict(required.server.extensions)
    _session_log(postfix, "ehlo=1 quit=1 commands=2")
    # auto: one command at a time, which this Postfix accepts without a complaint.
    auto = await _probe(postfix)
    assert auto.success, describe(auto)
    assert not auto.pipelined
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")


def test_postfix_logs_a_sender_that_does_not_wait_for_354(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    """The control for the log checks above: the complaint they look for is really logged, here
    for a batch that goes on past DATA (the message before the 354, which RFC 2920 forbids)."""
    postfix = postfix_factory(main_cf=ACCEPT | FORBID)
    with socket.create_connection(postfix.address, timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO probe.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<>\r\nRCPT TO:<probe@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        replies = [reader.readline() for _ in range(3)]
    assert replies[2] == b"554 5.5.0 Error: SMTP protocol synchronization\r\n", replies
    postfix.wait_log(r"improper command pipelining after DATA from localhost\[127\.0\.0\.1\]")
    assert COMPLAINTS.search(postfix.log()) is not None


async def test_a_message_over_message_size_limit_is_not_sent(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    limit = 200
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"message_size_limit": str(limit)})
    result = await _probe(postfix)
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    assert f"larger than the server's SIZE limit ({limit} bytes)" in result.failure.message
    assert dict(result.server.extensions)["SIZE"] == (str(limit),)
    assert not any(t.startswith("C MAIL") for t in _transcript(result))
    _session_log(postfix, "ehlo=1 quit=1 commands=2")


async def test_size_is_declared_under_the_limit(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"message_size_limit": "100000"})
    result = await _probe(postfix)
    assert result.success, describe(result)
    (mail,) = [t for t in _transcript(result) if t.startswith("C MAIL")]
    size = int(mail.rsplit("SIZE=", 1)[1])
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
    # What Postfix counted as the message size is at least what was declared (it adds headers).
    queued = postfix.wait_log(r"qmgr\[\d+\]: \w+: from=<>, size=(\d+)")
    assert int(queued.group(1)) >= size


async def test_smtputf8_with_a_non_ascii_address(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"smtputf8_enable": "yes"})
    result = await _probe(postfix, mail_from="jörg@example.org", rcpt_to=("grüße@example.org",))
    assert result.success, describe(result)
    (mail,) = [t for t in _transcript(result) if t.startswith("C MAIL")]
    assert mail.startswith("C MAIL FROM:<jörg@example.org> SIZE=") and mail.endswith(
        " BODY=8BITMIME SMTPUTF8"
    )
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
    # Queued and delivered (to the discard transport) under the UTF-8 addresses themselves.
    postfix.wait_log(r"qmgr\[\d+\]: \w+: from=<jörg@example\.org>, size=\d+, nrcpt=1")
    postfix.wait_log(r"to=<grüße@example\.org>, relay=none, .*status=sent")


async def test_smtputf8_not_offered_is_refused_before_mail(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"smtputf8_enable": "no"})
    for sessions, changes in enumerate(
        ({"mail_from": "jörg@example.org"}, {"smtputf8": SMTPUTF8.REQUIRED}), 1
    ):
        result = await _probe(postfix, **changes)
        assert result.failure is not None, describe(result)
        assert (result.failure.phase, result.failure.reason) == (Phase.MAIL, FailureReason.EXPECTATION_FAILED)
        assert "does not offer SMTPUTF8" in result.failure.message
        assert "SMTPUTF8" not in dict(result.server.extensions)
        _session_log(postfix, "ehlo=1 quit=1 commands=2", sessions=sessions)


async def test_8bitmime_for_an_8bit_body(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID)
    result = await _probe(postfix, message=MessageConfig(body="Grüße aus Köln"))
    assert result.success, describe(result)
    (mail,) = [t for t in _transcript(result) if t.startswith("C MAIL")]
    assert mail.endswith(" BODY=8BITMIME") and "SMTPUTF8" not in mail
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")


async def test_8bit_body_to_a_postfix_without_8bitmime(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"smtpd_discard_ehlo_keywords": "8bitmime"})
    result = await _probe(postfix, message=MessageConfig(body="Grüße aus Köln"))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.MAIL, FailureReason.EXPECTATION_FAILED)
    _session_log(postfix, "ehlo=1 quit=1 commands=2")


@pytest.mark.parametrize("pipelining", [Pipelining.AUTO, Pipelining.NEVER])
async def test_a_chunked_conversation_is_accepted(
    postfix_factory: Callable[..., PostfixSmtpd], pipelining: Pipelining
) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID)
    body = "a line\n.starts with a dot\nGrüße"
    result = await _probe(
        postfix, chunking=Chunking.AUTO, pipelining=pipelining, message=MessageConfig(body=body)
    )
    assert result.success, describe(result)
    assert result.pipelined is (pipelining is Pipelining.AUTO)
    assert names(result)[-4:] == ["mail", "rcpt", "message", "quit"] and "data" not in names(result)
    (mail,) = [t for t in _transcript(result) if t.startswith("C MAIL")]
    size = int(mail.split("SIZE=", 1)[1].split(" ", 1)[0])
    assert f"C BDAT {size} LAST <message: {size} bytes>" in _transcript(result)
    message = result.phase(Phase.MESSAGE)
    assert message is not None and message.reply_code == 250
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 bdat=1 quit=1 commands=5")


async def test_chunking_not_offered_uses_data(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(main_cf=ACCEPT | FORBID | {"smtpd_discard_ehlo_keywords": "chunking"})
    result = await _probe(postfix, chunking=Chunking.AUTO)
    assert result.success, describe(result)
    assert "data" in names(result)
    _session_log(postfix, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
