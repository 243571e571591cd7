"""Postfix's smtp-sink as a real MTA-side peer: a full conversation, and its fault options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from smtp_exporter.model import FailureReason, Phase, Transaction
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module, names
from tests.servers.smtp_sink import SmtpSink

SinkFactory = Callable[..., SmtpSink]
FULL = ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message", "quit"]


async def test_full_conversation(smtp_sink: SmtpSink) -> None:
    result = await Prober().probe(
        *compiled(
            smtp_sink.target,
            "smtp_full",
            module(
                "smtp_full",
                port=smtp_sink.port,
                mail_from="probe@probe.test",
                rcpt_to=("postmaster@sink.test", "abuse@sink.test"),
            ),
        ),
    )
    assert result.success, describe(result)
    assert names(result) == FULL
    assert [p.reply_code for p in result.phases] == [None, 220, 250, 250, 250, 354, 250, 221]
    assert result.server.ehlo_hostname == "sink.test"
    assert "PIPELINING" in dict(result.server.extensions)
    (message,) = smtp_sink.wait_messages(1)
    assert message.helo == "probe.test"
    assert message.mail_args.startswith("<probe@probe.test>")
    assert [r.split()[0] for r in message.rcpt_args] == ["<postmaster@sink.test>", "<abuse@sink.test>"]
    assert b"\nSubject: smtp-exporter probe\n" in message.content
    assert b"This message was sent by smtp-exporter" in message.content


@pytest.mark.parametrize(
    ("options", "transaction", "phase", "reason", "code_class"),
    [
        ({"soft_reject": ["CONNECT"]}, Transaction.NONE, Phase.BANNER, FailureReason.REPLY_TEMPORARY, 4),
        ({"hard_reject": ["CONNECT"]}, Transaction.NONE, Phase.BANNER, FailureReason.REPLY_PERMANENT, 5),
        ({"soft_reject": ["MAIL"]}, Transaction.MESSAGE, Phase.MAIL, FailureReason.REPLY_TEMPORARY, 4),
        ({"hard_reject": ["RCPT"]}, Transaction.MESSAGE, Phase.RCPT, FailureReason.REPLY_PERMANENT, 5),
        ({"shutdown": ["RCPT"]}, Transaction.MESSAGE, Phase.RCPT, FailureReason.REPLY_TEMPORARY, 4),
        ({"soft_reject": ["DATA"]}, Transaction.MESSAGE, Phase.DATA, FailureReason.REPLY_TEMPORARY, 4),
        ({"hard_reject": ["."]}, Transaction.MESSAGE, Phase.MESSAGE, FailureReason.REPLY_PERMANENT, 5),
        ({"hard_reject": ["RSET"]}, Transaction.ENVELOPE, Phase.RSET, FailureReason.REPLY_PERMANENT, 5),
        ({"disconnect": ["EHLO"]}, Transaction.NONE, Phase.EHLO, FailureReason.CONNECTION_CLOSED, None),
        ({"disconnect": ["DATA"]}, Transaction.MESSAGE, Phase.DATA, FailureReason.CONNECTION_CLOSED, None),
        ({"disconnect": ["."]}, Transaction.MESSAGE, Phase.MESSAGE, FailureReason.CONNECTION_CLOSED, None),
    ],
    ids=lambda value: (
        None if not isinstance(value, dict) else "-".join(f"{k}={v[0]}" for k, v in value.items())
    ),
)
async def test_fault_options(
    smtp_sink_factory: SinkFactory,
    options: dict[str, Any],
    transaction: Transaction,
    phase: Phase,
    reason: FailureReason,
    code_class: int | None,
) -> None:
    sink = smtp_sink_factory(**options)
    result = await Prober().probe(
        *compiled(
            sink.target,
            "m",
            module(port=sink.port, transaction=transaction, rcpt_to=("a@sink.test",), timeout=3.0),
        ),
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (phase, reason), describe(result)
    assert result.duration_seconds < 3.0
    if code_class is None:
        assert phase.value not in names(result)
        assert names(result)[-1] != "quit"
    else:
        assert names(result)[-1] == phase.value, describe(result)
        failed = result.phases[-1]
        assert failed.reply_code is not None and failed.reply_code // 100 == code_class
        assert failed.enhanced_status is not None and failed.enhanced_status.startswith(f"{code_class}.")


@pytest.mark.parametrize(
    "options", [{"hard_reject": ["EHLO"]}, {"esmtp": False}], ids=["reject-ehlo", "no-esmtp"]
)
async def test_helo_fallback_with_a_real_mta(smtp_sink_factory: SinkFactory, options: dict[str, Any]) -> None:
    sink = smtp_sink_factory(**options)
    result = await Prober().probe(
        *compiled(sink.target, "m", module("smtp_full", port=sink.port, rcpt_to=("a@sink.test",)))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "helo", "mail", "rcpt", "data", "message", "quit"]
    ehlo = result.phase(Phase.EHLO)
    assert ehlo is not None and ehlo.reply_code is not None and ehlo.reply_code // 100 == 5


async def test_quit_rejected_is_not_a_failure(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(hard_reject=["QUIT"])
    prober = Prober()
    lenient = await prober.probe(*compiled(sink.target, "m", module(port=sink.port)))
    assert lenient.success, describe(lenient)
    assert lenient.phases[-1].phase is Phase.QUIT and lenient.phases[-1].reply_code == 500
    strict = await prober.probe(*compiled(sink.target, "m", module(port=sink.port, fail_on_quit=True)))
    assert strict.failure is not None
    assert (strict.failure.phase, strict.failure.reason) == (Phase.QUIT, FailureReason.REPLY_PERMANENT)


async def test_custom_bounce_reply_text_is_recorded(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory(hard_reject=["RCPT"], hard_bounce_reply="550 5.1.1 No such user here")
    result = await Prober().probe(
        *compiled(sink.target, "m", module("smtp_envelope", port=sink.port, rcpt_to=("x@sink.test",)))
    )
    assert result.failure is not None and result.failure.phase is Phase.RCPT
    rcpt = result.phases[-1]
    assert (rcpt.reply_code, rcpt.enhanced_status, rcpt.reply) == (550, "5.1.1", "5.1.1 No such user here")
    assert "550 5.1.1 No such user here" in result.failure.message
