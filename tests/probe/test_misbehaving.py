"""Servers that misbehave (scripted, in-process): the right phase and reason, inside the deadline,
and the client's socket closed every time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from smtp_exporter.config.schema import Pipelining
from smtp_exporter.model import FailureReason, Phase, Transaction
from smtp_exporter.probe import Prober
from tests.probe.common import Stopwatch, compiled, describe, module, names
from tests.servers import scripted
from tests.servers.scripted import (
    BANNER,
    DEFAULT_REPLIES,
    EHLO_REPLY,
    Answer,
    Close,
    ExpectLine,
    HalfClose,
    Reset,
    Script,
    ScriptedServer,
    Send,
    Sleep,
)

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]
TIMEOUT = 1.0


CASES: dict[str, tuple[Script, Transaction, Phase, FailureReason]] = {
    "garbage_greeting": (
        scripted.garbage_greeting(),
        Transaction.NONE,
        Phase.BANNER,
        FailureReason.UNEXPECTED_REPLY,
    ),
    "silence": (scripted.silence(), Transaction.NONE, Phase.BANNER, FailureReason.TIMEOUT),
    "trickle": (scripted.trickle(0.05), Transaction.NONE, Phase.BANNER, FailureReason.TIMEOUT),
    "endless_multiline_banner": (
        scripted.endless_multiline(at_banner=True),
        Transaction.NONE,
        Phase.BANNER,
        FailureReason.PROTOCOL_ERROR,
    ),
    "endless_multiline_ehlo": (
        scripted.endless_multiline(),
        Transaction.NONE,
        Phase.EHLO,
        FailureReason.PROTOCOL_ERROR,
    ),
    "megabyte_line": (scripted.megabyte_line(), Transaction.NONE, Phase.BANNER, FailureReason.PROTOCOL_ERROR),
    "close_after_ehlo": (
        scripted.close_after_ehlo(),
        Transaction.NONE,
        Phase.EHLO,
        FailureReason.CONNECTION_CLOSED,
    ),
    "close_in_multiline": (
        [Send(BANNER), ExpectLine(), Send(b"250-mail.test\r\n250-SIZE 1000\r\n"), Close()],
        Transaction.NONE,
        Phase.EHLO,
        FailureReason.CONNECTION_CLOSED,
    ),
    "close_at_rcpt": (
        [*scripted.until_rcpt(), Close()],
        Transaction.MESSAGE,
        Phase.RCPT,
        FailureReason.CONNECTION_CLOSED,
    ),
    "reset_at_connect": ([Reset()], Transaction.NONE, Phase.BANNER, FailureReason.CONNECTION_CLOSED),
    "reset_at_ehlo": (
        [Send(BANNER), ExpectLine(), Reset()],
        Transaction.NONE,
        Phase.EHLO,
        FailureReason.CONNECTION_CLOSED,
    ),
    "reset_at_rcpt": (
        [*scripted.until_rcpt(), Reset()],
        Transaction.MESSAGE,
        Phase.RCPT,
        FailureReason.CONNECTION_CLOSED,
    ),
    "half_close_after_banner": (
        [Send(BANNER), HalfClose()],
        Transaction.NONE,
        Phase.EHLO,
        FailureReason.CONNECTION_CLOSED,
    ),
    "tarpit_at_rcpt": (
        [*scripted.until_rcpt(), Sleep(30)],
        Transaction.MESSAGE,
        Phase.RCPT,
        FailureReason.TIMEOUT,
    ),
    "banner_wrong_class": (
        scripted.minimal_conversation(banner=b"250 mail.test hello\r\n"),
        Transaction.NONE,
        Phase.BANNER,
        FailureReason.UNEXPECTED_REPLY,
    ),
    "data_answered_250": (
        scripted.minimal_conversation(DATA=b"250 2.0.0 Ok whatever\r\n"),
        Transaction.MESSAGE,
        Phase.DATA,
        FailureReason.UNEXPECTED_REPLY,
    ),
    "unsolicited_reply": (
        scripted.minimal_conversation(EHLO=EHLO_REPLY + b"250 2.0.0 one more, never asked for\r\n"),
        Transaction.ENVELOPE,
        Phase.MAIL,
        FailureReason.PROTOCOL_ERROR,
    ),
    "unsolicited_reply_in_transaction": (  # between two commands of one script (MAIL, RCPT)
        # A server without PIPELINING: in a pipelined batch the extra reply would be read as
        # RCPT's (see test_pipelining.py for broken batches).
        scripted.minimal_conversation(
            EHLO=b"250-mail.test\r\n250 SIZE 10240000\r\n",
            MAIL=b"250 2.1.0 Ok\r\n250 2.0.0 one more, never asked for\r\n",
        ),
        Transaction.MESSAGE,
        Phase.RCPT,
        FailureReason.PROTOCOL_ERROR,
    ),
    "tarpit_at_message": (
        [
            *scripted.until_rcpt(),
            Send(b"250 2.1.5 Ok\r\n"),
            ExpectLine(),
            Send(b"354 End data with <CR><LF>.<CR><LF>\r\n"),
            Sleep(30),
        ],
        Transaction.MESSAGE,
        Phase.MESSAGE,
        FailureReason.TIMEOUT,
    ),
    "continuation_code_changes": (
        scripted.minimal_conversation(EHLO=b"250-mail.test\r\n251 SIZE 10\r\n"),
        Transaction.NONE,
        Phase.EHLO,
        FailureReason.PROTOCOL_ERROR,
    ),
    "nul_in_reply": (
        scripted.minimal_conversation(banner=b"220 mail.test \x00 ESMTP\r\n"),
        Transaction.NONE,
        Phase.BANNER,
        FailureReason.PROTOCOL_ERROR,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_misbehaving_server(scripted_server: ScriptedFactory, case: str) -> None:
    script, transaction, phase, reason = CASES[case]
    server = await scripted_server(script)
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(
                server.target,
                "m",
                module(port=server.port, transaction=transaction, rcpt_to=("a@mail.test",), timeout=TIMEOUT),
            ),
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (phase, reason), describe(result)
    # The failed phase and everything after it are absent, or it is the last one (a reply was read).
    recorded = names(result)
    assert recorded[-1] == phase.value or phase.value not in recorded, describe(result)
    assert "quit" not in recorded
    # Inside the deadline, never later, whatever the server does.
    assert result.duration_seconds < TIMEOUT + 0.5
    assert watch.seconds < TIMEOUT + 1.0
    # No leaked connection: every connection is closed, and when the server kept it open,
    # it is the client that closed it.
    assert await server.wait_closed(2.0), f"connection left open after {case}"
    (connection,) = server.connections
    assert connection.client_closed or connection.server_closed
    if reason is FailureReason.TIMEOUT or case.startswith(("garbage", "endless", "megabyte")):
        assert connection.client_closed
    # Commands always end with CRLF.
    received = bytes(connection.received)
    assert received.count(b"\n") == received.count(b"\r\n")


@pytest.mark.parametrize(
    "case", ["banner_wrong_class", "data_answered_250"], ids=["after-banner", "after-data"]
)
async def test_quit_after_failure_when_connection_usable(scripted_server: ScriptedFactory, case: str) -> None:
    script, transaction, _, _ = CASES[case]
    server = await scripted_server(script)
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, transaction=transaction, timeout=TIMEOUT))
    )
    assert not result.success
    assert await server.wait_closed(2.0)
    lines = server.connections[0].lines
    assert lines[-1] == b"QUIT\r\n", lines
    # The server answered QUIT with 221 and closed: the conversation ended cleanly.
    assert server.connections[0].server_closed


async def test_bare_lf_replies_are_tolerated(scripted_server: ScriptedFactory) -> None:
    replies = {verb: reply.replace(b"\r\n", b"\n") for verb, reply in DEFAULT_REPLIES.items()}
    server = await scripted_server([Send(b"220 mail.test ESMTP bare LF\n"), Answer(replies)])
    result = await Prober().probe(
        *compiled(server.target, "m", module("smtp_full", port=server.port, rcpt_to=("a@mail.test",)))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "mail", "rcpt", "data", "message", "quit"]
    assert dict(result.server.extensions)["SIZE"] == ("10240000",)
    assert result.server.banner == "mail.test ESMTP bare LF"
    received = bytes(server.connections[0].received)
    assert received.count(b"\n") == received.count(b"\r\n"), "the client must send CRLF, always"
    assert await server.wait_closed(2.0)


async def test_many_misbehaving_servers_at_once(scripted_server: ScriptedFactory) -> None:
    """Hostile servers probed together on one loop: each fails on its own, within the deadline."""
    servers = [await scripted_server(CASES[case][0]) for case in CASES]
    prober = Prober()
    async with Stopwatch.timing() as watch:
        results = await asyncio.gather(
            *(
                prober.probe(
                    *compiled(
                        server.target,
                        "m",
                        module(
                            port=server.port,
                            transaction=CASES[case][1],
                            rcpt_to=("a@mail.test",),
                            timeout=TIMEOUT,
                        ),
                    ),
                )
                for server, case in zip(servers, CASES, strict=True)
            )
        )
    assert watch.seconds < TIMEOUT + 1.0
    for result, case in zip(results, CASES, strict=True):
        _, _, phase, reason = CASES[case]
        assert result.failure is not None, case
        assert (result.failure.phase, result.failure.reason) == (phase, reason), case
    for server in servers:
        assert await server.wait_closed(2.0)


async def test_quit_after_failure_stays_inside_the_deadline(scripted_server: ScriptedFactory) -> None:
    """A late 4xx, then silence to QUIT: the goodbye is cut short at the probe's deadline."""
    server = await scripted_server(
        [*scripted.until_rcpt(), Sleep(0.8), Send(b"451 4.3.0 Try again later\r\n")]
    )
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(
                server.target,
                "m",
                # One command at a time: after a pipelined batch, DATA's reply would come first.
                module(
                    "smtp_full",
                    port=server.port,
                    rcpt_to=("a@mail.test",),
                    timeout=TIMEOUT,
                    pipelining=Pipelining.NEVER,
                ),
            ),
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RCPT, FailureReason.REPLY_TEMPORARY)
    assert 0.8 <= result.duration_seconds < TIMEOUT + 0.2
    assert watch.seconds < TIMEOUT + 0.5
    assert server.connections[0].lines[-1] == b"QUIT\r\n"
    assert await server.wait_closed(2.0)
    assert server.connections[0].client_closed


@pytest.mark.parametrize("close", [False, True], ids=["stays-open", "then-closes"])
async def test_421_greeting(scripted_server: ScriptedFactory, close: bool) -> None:
    """An overloaded server: 421 at the greeting (RFC 5321 3.1), with or without hanging up."""
    steps: list[scripted.Step] = [Send(b"421 4.3.2 mail.test Service not available, try later\r\n")]
    steps += [Close()] if close else [Answer(DEFAULT_REPLIES)]
    server = await scripted_server(steps)
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, timeout=TIMEOUT)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.BANNER, FailureReason.REPLY_TEMPORARY)
    assert names(result) == ["connect", "banner"]
    banner = result.phases[-1]
    assert (banner.reply_code, banner.enhanced_status) == (421, "4.3.2")
    assert result.server.banner == "4.3.2 mail.test Service not available, try later"
    assert result.duration_seconds < TIMEOUT
    assert await server.wait_closed(2.0)
    if not close:
        assert server.connections[0].lines == [b"QUIT\r\n"]


def _until_quit() -> list[scripted.Step]:
    """A normal server up to (and reading) QUIT, for transaction none."""
    return [Send(BANNER), ExpectLine(), Send(EHLO_REPLY), ExpectLine()]


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_no_quit_reply_is_not_a_failure(scripted_server: ScriptedFactory, ending: str) -> None:
    server = await scripted_server([*_until_quit(), Close() if ending == "close" else Reset()])
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, timeout=TIMEOUT)))
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo"]
    assert server.connections[0].lines[-1] == b"QUIT\r\n"


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_no_quit_reply_fails_with_fail_on_quit(scripted_server: ScriptedFactory, ending: str) -> None:
    server = await scripted_server([*_until_quit(), Close() if ending == "close" else Reset()])
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, timeout=TIMEOUT, fail_on_quit=True))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.QUIT, FailureReason.CONNECTION_CLOSED)


async def test_silence_after_quit_is_not_a_failure(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(_until_quit())  # then holds the connection, silent
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, timeout=TIMEOUT)))
    assert result.success, describe(result)
    assert await server.wait_closed(2.0)


async def test_silence_after_quit_with_fail_on_quit(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(_until_quit())
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(server.target, "m", module(port=server.port, timeout=TIMEOUT, fail_on_quit=True))
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.QUIT, FailureReason.TIMEOUT)
    assert watch.seconds < TIMEOUT + 0.5
    assert await server.wait_closed(2.0)
    assert server.connections[0].client_closed
