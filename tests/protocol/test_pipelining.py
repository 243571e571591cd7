"""PIPELINING (RFC 2920) and CHUNKING (RFC 3030) in memory: the batch, its timing, the
server's replies in any chunks, broken batches, and BDAT in place of DATA.

The real-server side (Postfix with smtpd_forbid_unauth_pipelining, scripted peers through
the asyncio driver) is tests/probe/test_pipelining.py and test_postfix_modern.py.
"""

from __future__ import annotations

import pytest

from smtp_exporter.config.schema import Chunking, MessageConfig, Pipelining
from smtp_exporter.model import Phase, Transaction
from smtp_exporter.protocol import Status
from tests.protocol.wire import (
    BYE,
    EHLO_ALL,
    EHLO_PLAIN,
    GO_AHEAD,
    OK_MAIL,
    OK_RCPT,
    QUEUED,
    Wire,
    module,
)

TWO = ("a@x.test", "b@x.test")


def _size(wire: Wire) -> int:
    assert wire.message is not None
    return len(wire.message) - 3  # no dot-stuffing in the default message


def test_mail_every_rcpt_and_data_go_in_one_write_each_phase_timed_from_it() -> None:
    wire = Wire(module(rcpt_to=TWO)).start()
    batch_at, batch = wire.writes[-1]
    assert batch == (
        f"MAIL FROM:<> SIZE={_size(wire)}\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n".encode()
    )
    # The replies come one at a time, a tick apart: each phase ends at its own reply.
    wire.feed(OK_MAIL)
    mail_at = wire.clock
    wire.feed(OK_RCPT)
    assert wire.last == batch  # nothing more is written while the batch is being answered
    wire.feed(OK_RCPT)
    rcpt_at = wire.clock
    wire.feed(GO_AHEAD)
    data_at = wire.clock - 1  # the message was written at the next tick
    message_at, message = wire.writes[-1]
    assert message == wire.message
    wire.feed(QUEUED)
    quit_at = wire.last_time
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    bye_at = wire.clock
    assert wire.failure() is None
    assert wire.outcome().pipelined
    durations = wire.durations()
    # Overlapping phases, all from the batch's write: mail 1, rcpt 3, data 4 ticks.
    assert durations["mail"] == mail_at - batch_at == 1.0
    assert durations["rcpt"] == rcpt_at - batch_at == 3.0
    assert durations["data"] == data_at - batch_at == 4.0
    assert durations["message"] == quit_at - 1 - message_at == 1.0
    assert durations["quit"] == bye_at - quit_at == 1.0
    assert [p.phase.value for p in wire.outcome().phases][-5:] == ["mail", "rcpt", "data", "message", "quit"]
    # The transcript shows the batch: four client lines stamped with the same write.
    events = [
        (at, what) for at, direction, what in wire.outcome().events if direction == "C" and at == batch_at
    ]
    assert len(events) == 4
    assert "PIPELINING: MAIL, 2 RCPT and DATA in one write" in wire.notes()


@pytest.mark.parametrize("cut", [1, 2, 5, 13, None])
def test_the_batch_answered_in_multiline_replies_in_any_chunks(cut: int | None) -> None:
    wire = Wire(module(rcpt_to=TWO)).start()
    replies = (
        b"250-2.1.0 Sender\r\n250 2.1.0 Ok\r\n"
        b"250-2.1.5 first\r\n250 2.1.5 Ok\r\n"
        b"250 2.1.5 Ok\r\n"
        b"354-Go ahead\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    chunks = [replies] if cut is None else [replies[i : i + cut] for i in range(0, len(replies), cut)]
    wire.feed(*chunks)
    assert wire.last == wire.message
    wire.feed(QUEUED)
    wire.feed(BYE)
    assert wire.failure() is None
    phases = {p.phase.value: (p.reply_code, p.reply) for p in wire.outcome().phases}
    assert phases["mail"] == (250, "2.1.0 Sender 2.1.0 Ok")
    assert phases["rcpt"] == (250, "2.1.5 Ok")  # the last recipient's reply
    assert phases["data"] == (354, "Go ahead End data with <CR><LF>.<CR><LF>")
    # Each reply is stamped with the chunk that completed it: in one chunk, all at once.
    durations = wire.durations()
    if cut is None:
        assert durations["mail"] == durations["rcpt"] == durations["data"]
    else:
        assert durations["mail"] < durations["rcpt"] < durations["data"]


def test_the_whole_batch_and_the_message_reply_in_one_chunk() -> None:
    """A server may answer DATA's 354 together with the other replies; the message follows."""
    wire = Wire(module()).start()
    wire.feed(OK_MAIL + OK_RCPT + GO_AHEAD)
    assert wire.last == wire.message
    wire.feed(QUEUED)
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.session.status is Status.DONE
    assert wire.failure() is None


@pytest.mark.parametrize(
    ("replies", "phase", "message"),
    [
        # RCPT's reply missing: DATA's 354 comes where it belongs.
        (OK_MAIL + GO_AHEAD, Phase.RCPT, "354 where the reply to rcpt belongs"),
        # MAIL's and RCPT's replies missing.
        (GO_AHEAD, Phase.MAIL, "354 where the reply to mail belongs"),
    ],
    ids=["rcpt_reply_missing", "mail_reply_missing"],
)
def test_a_354_out_of_place_is_a_broken_batch(replies: bytes, phase: Phase, message: str) -> None:
    wire = Wire(module()).start()
    batch = wire.last
    wire.feed(replies)
    outcome = wire.outcome()
    assert wire.failure() == (phase, "protocol_error")
    assert outcome.failure is not None and message in outcome.failure.message
    # The server reads a message now: no QUIT (it would be text), nothing more at all.
    assert wire.last == batch
    assert outcome.pipelined


def test_a_missing_reply_among_several_recipients() -> None:
    wire = Wire(module(rcpt_to=TWO)).start()
    batch = wire.last
    wire.feed(OK_MAIL + OK_RCPT + GO_AHEAD)  # the second RCPT's reply is missing
    assert wire.failure() == (Phase.RCPT, "protocol_error")
    # One recipient was accepted: ending the message would deliver it, so nothing is sent.
    assert wire.last == batch


def test_without_pipelining_a_354_to_rcpt_is_an_unexpected_reply() -> None:
    wire = Wire(module(pipelining=Pipelining.NEVER)).start()
    wire.feed(OK_MAIL)
    assert wire.last.startswith(b"RCPT TO:")
    wire.feed(GO_AHEAD)
    assert wire.last == b"QUIT\r\n"  # an ordinary refusal: the server is not deemed to read text
    wire.feed(BYE)
    assert wire.failure() == (Phase.RCPT, "unexpected_reply")
    assert not wire.outcome().pipelined


def test_the_connection_closed_mid_batch_fails_the_phase_whose_reply_is_missing() -> None:
    wire = Wire(module()).start()
    wire.feed(OK_MAIL)
    wire.close()
    assert wire.failure() == (Phase.RCPT, "connection_closed")


def test_a_refused_recipient_then_354_ends_the_empty_message_with_a_dot() -> None:
    wire = Wire(module()).start()
    wire.feed(OK_MAIL + b"550 5.1.1 no such user\r\n" + GO_AHEAD)
    assert wire.last == b".\r\n"  # RFC 2920 3.1: no recipient, so nothing is delivered
    wire.feed(b"554 5.5.1 no valid recipients\r\n")
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() == (Phase.RCPT, "reply_permanent")


def test_a_refused_recipient_then_a_refused_data_says_quit() -> None:
    wire = Wire(module()).start()
    wire.feed(OK_MAIL + b"550 5.1.1 no such user\r\n")
    assert wire.last.endswith(b"DATA\r\n")  # DATA's reply decides whether QUIT would be text
    wire.feed(b"554 5.5.1 Error: no valid recipients\r\n")
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() == (Phase.RCPT, "reply_permanent")


@pytest.mark.parametrize(
    "rcpt_replies",
    [b"550 5.1.1 no\r\n" + OK_RCPT, OK_RCPT + b"550 5.1.1 no\r\n"],
    ids=["first_refused", "second_refused"],
)
def test_an_accepted_recipient_is_never_sent_a_message_after_a_refusal(rcpt_replies: bytes) -> None:
    wire = Wire(module(rcpt_to=TWO)).start()
    batch = wire.last
    wire.feed(OK_MAIL + rcpt_replies + GO_AHEAD)
    assert wire.failure() == (Phase.RCPT, "reply_permanent")
    assert wire.last == batch  # not even the lone dot: it would deliver to the accepted one
    assert "closing without ending the message, so nothing is delivered" in wire.notes()


def test_a_refused_sender_in_the_batch() -> None:
    wire = Wire(module()).start()
    wire.feed(b"553 5.7.1 sender rejected\r\n" + b"503 5.5.1 need MAIL\r\n" + b"503 5.5.1 need RCPT\r\n")
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() == (Phase.MAIL, "reply_permanent")


def test_required_but_not_offered_fails_before_mail() -> None:
    wire = Wire(module(pipelining=Pipelining.REQUIRED)).start(EHLO_PLAIN)
    assert wire.last == b"QUIT\r\n"  # no MAIL at all
    wire.feed(BYE)
    assert wire.failure() == (Phase.MAIL, "expectation_failed")
    failure = wire.outcome().failure
    assert failure is not None and "does not offer PIPELINING" in failure.message
    assert not wire.outcome().pipelined


def test_required_and_offered_pipelines() -> None:
    wire = Wire(module(pipelining=Pipelining.REQUIRED)).start()
    assert wire.last.count(b"\r\n") == 3  # MAIL, RCPT, DATA


@pytest.mark.parametrize(
    ("pipelining", "ehlo"),
    [(Pipelining.AUTO, EHLO_PLAIN), (Pipelining.NEVER, EHLO_ALL)],
    ids=["auto_not_offered", "never"],
)
def test_one_command_at_a_time(pipelining: Pipelining, ehlo: bytes) -> None:
    wire = Wire(module(pipelining=pipelining, chunking=Chunking.NEVER)).start(ehlo)
    assert wire.last == b"MAIL FROM:<>\r\n" or wire.last.startswith(b"MAIL FROM:<> SIZE=")
    for reply, command in ((OK_MAIL, b"RCPT TO:<postmaster>\r\n"), (OK_RCPT, b"DATA\r\n")):
        wire.feed(reply)
        assert wire.last == command
    wire.feed(GO_AHEAD)
    assert wire.last == wire.message
    wire.feed(QUEUED)
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() is None and not wire.outcome().pipelined
    assert not any(note.startswith("PIPELINING") for note in wire.notes())


def test_an_envelope_batch_ends_with_rset() -> None:
    wire = Wire(module("smtp_envelope")).start()
    assert wire.last == b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRSET\r\n"
    wire.feed(OK_MAIL, OK_RCPT, b"250 2.0.0 Ok\r\n")
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() is None and wire.outcome().pipelined
    assert "PIPELINING: MAIL, RCPT and RSET in one write" in wire.notes()


# CHUNKING

DOTTED = MessageConfig(body="a line\n.starts with a dot\n..and two\nend")


def test_bdat_last_replaces_data_and_the_dotted_message() -> None:
    wire = Wire(module(chunking=Chunking.AUTO, message=DOTTED)).start()
    assert wire.message is not None
    content = wire.message[:-3].replace(b"\r\n..", b"\r\n.")
    assert b"\r\n.starts with a dot\r\n..and two\r\n" in content
    # The batch is MAIL and RCPT: BDAT waits for their replies.
    assert wire.last == f"MAIL FROM:<> SIZE={len(content)}\r\nRCPT TO:<postmaster>\r\n".encode()
    wire.feed(OK_MAIL, OK_RCPT)
    bdat = wire.last
    assert bdat == f"BDAT {len(content)} LAST\r\n".encode() + content
    wire.feed(QUEUED)
    assert wire.last == b"QUIT\r\n"
    wire.feed(BYE)
    assert wire.failure() is None
    names = [p.phase.value for p in wire.outcome().phases]
    assert names[-4:] == ["mail", "rcpt", "message", "quit"] and "data" not in names
    assert wire.durations()["message"] == 1.0  # from the BDAT write to its reply
    assert f"BDAT {len(content)} LAST <message: {len(content)} bytes>" in wire.client_lines()
    assert "PIPELINING: MAIL and RCPT in one write" in wire.notes()


def test_bdat_without_pipelining() -> None:
    wire = Wire(module(chunking=Chunking.AUTO, pipelining=Pipelining.NEVER)).start()
    wire.feed(OK_MAIL)
    wire.feed(OK_RCPT)
    assert wire.last.startswith(b"BDAT ")
    wire.feed(QUEUED)
    wire.feed(BYE)
    assert wire.failure() is None and not wire.outcome().pipelined


def test_bdat_refused_fails_the_message_phase() -> None:
    wire = Wire(module(chunking=Chunking.AUTO)).start()
    wire.feed(OK_MAIL + OK_RCPT)
    wire.feed(b"552 5.3.4 Message too big\r\n")
    assert wire.last == b"QUIT\r\n"  # the BDAT LAST chunk is complete: QUIT is a command again
    wire.feed(BYE)
    assert wire.failure() == (Phase.MESSAGE, "reply_permanent")


@pytest.mark.parametrize(
    ("chunking", "ehlo"),
    [(Chunking.AUTO, EHLO_PLAIN), (Chunking.NEVER, EHLO_ALL)],
    ids=["auto_not_offered", "never"],
)
def test_data_when_chunking_is_not_used(chunking: Chunking, ehlo: bytes) -> None:
    wire = Wire(module(chunking=chunking, pipelining=Pipelining.NEVER)).start(ehlo)
    wire.feed(OK_MAIL)
    wire.feed(OK_RCPT)
    assert wire.last == b"DATA\r\n"


def test_chunking_does_not_apply_to_an_envelope_probe() -> None:
    wire = Wire(module("smtp_envelope", chunking=Chunking.AUTO)).start()
    assert wire.last.endswith(b"RSET\r\n")
    assert wire.session.module.transaction is Transaction.ENVELOPE
