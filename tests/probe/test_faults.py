"""A 4xx and a 5xx reply injected at every phase of a real aiosmtpd conversation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from smtp_exporter.config.schema import AuthMechanism, ModuleConfig, Pipelining, StartTLS
from smtp_exporter.model import FailureReason, Phase, Transaction
from smtp_exporter.probe import Prober
from tests.probe.common import ENVELOPE_PHASES, FULL_PHASES, auth, compiled, describe, module, names, trusting
from tests.servers.aiosmtpd_server import TEST_PASSWORD, TEST_USERNAME, AiosmtpdServer, Fault
from tests.servers.scripted import (
    DEFAULT_REPLIES,
    Answer,
    ExpectLine,
    ScriptedServer,
    Send,
    until_rcpt,
)
from tests.servers.tls import TestCA

FaultServer = Callable[..., AiosmtpdServer]

TEMPORARY = (451, "4.3.0", FailureReason.REPLY_TEMPORARY)
PERMANENT = (554, "5.3.0", FailureReason.REPLY_PERMANENT)


def _full_module(
    server: AiosmtpdServer, ca: TestCA, transaction: Transaction = Transaction.MESSAGE
) -> ModuleConfig:
    return module(
        "smtp_full",
        port=server.port,
        tls_config=trusting(ca),
        starttls=StartTLS.REQUIRED,
        helo_fallback=False,  # HELO is tested on its own below
        auth=auth(AuthMechanism.PLAIN),
        transaction=transaction,
        mail_from="probe@probe.test",
        rcpt_to=("postmaster@mail.test",),
    )


def _client_lines(server: AiosmtpdServer) -> list[bytes]:
    assert len(server.connections) == 1
    return bytes(server.connections[0].received).split(b"\r\n")


@pytest.mark.parametrize(("code", "enhanced", "reason"), [TEMPORARY, PERMANENT], ids=["4xx", "5xx"])
@pytest.mark.parametrize(
    "phase",
    ["banner", "ehlo", "starttls", "ehlo_tls", "auth", "mail", "rcpt", "data", "message", "rset"],
)
async def test_reply_fault_fails_in_that_phase(
    fault_server: FaultServer,
    tls_ca: TestCA,
    phase: str,
    code: int,
    enhanced: str,
    reason: FailureReason,
) -> None:
    server = fault_server(
        phase,
        code,
        enhanced,
        starttls=tls_ca.server_cert,
        auth_users={TEST_USERNAME: TEST_PASSWORD},
    )
    transaction = Transaction.ENVELOPE if phase == "rset" else Transaction.MESSAGE
    expected_phases = ENVELOPE_PHASES if phase == "rset" else FULL_PHASES
    if phase == "auth" and code // 100 == 5:
        reason = FailureReason.AUTH_FAILED  # a 5xx to AUTH means the credentials were refused

    result = await Prober().probe(
        *compiled(server.target, "faulty", _full_module(server, tls_ca, transaction))
    )

    assert not result.success, describe(result)
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == (Phase(phase), reason), describe(result)
    assert str(code) in result.failure.message
    # The phases up to the failed one, none after it.
    assert names(result) == list(expected_phases[: expected_phases.index(phase) + 1]), describe(result)
    failed = result.phases[-1]
    assert failed.reply_code == code
    assert failed.enhanced_status == enhanced
    assert failed.reply == f"{enhanced} Injected fault"
    # Phases before it got their normal replies.
    assert all(p.reply_code in (None, 220, 235, 250, 354) for p in result.phases[:-1]), describe(result)
    # The connection was still usable: the client said QUIT, then closed its socket.
    assert _client_lines(server)[-2:] == [b"QUIT", b""]
    assert await server.wait_closed()
    if phase == "message":
        (message,) = server.messages
        assert not message.accepted


@pytest.mark.parametrize(("code", "enhanced", "reason"), [TEMPORARY, PERMANENT], ids=["4xx", "5xx"])
async def test_helo_fault_after_ehlo_refused(
    smtp_server_factory: Callable[..., AiosmtpdServer],
    code: int,
    enhanced: str,
    reason: FailureReason,
) -> None:
    server = smtp_server_factory(faults=[Fault("ehlo", 502, "5.5.1"), Fault("helo", code, enhanced)])
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, helo_fallback=True)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.HELO, reason)
    assert names(result) == ["connect", "banner", "ehlo", "helo"]
    ehlo, helo = result.phases[2:]
    assert (ehlo.reply_code, ehlo.enhanced_status) == (502, "5.5.1")
    assert (helo.reply_code, helo.enhanced_status) == (code, enhanced)
    assert _client_lines(server)[-2:] == [b"QUIT", b""]
    assert await server.wait_closed()


async def test_helo_fallback_succeeds_when_ehlo_refused(
    smtp_server_factory: Callable[..., AiosmtpdServer],
) -> None:
    server = smtp_server_factory(faults=[Fault("ehlo", 500, "5.5.2")])
    result = await Prober().probe(
        *compiled(server.target, "m", module("smtp_full", port=server.port, rcpt_to=("a@mail.test",)))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "helo", "mail", "rcpt", "data", "message", "quit"]
    assert result.server.extensions == ()
    client = _client_lines(server)
    assert client[:2] == [b"EHLO probe.test", b"HELO probe.test"]
    (message,) = server.messages
    assert message.helo == "probe.test"


async def test_helo_fallback_cannot_offer_starttls_when_required(
    smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA
) -> None:
    """HELO has no extensions: a module requiring STARTTLS must not go on in clear text."""
    server = smtp_server_factory(starttls=tls_ca.server_cert, faults=[Fault("ehlo", 500, "5.5.2")])
    result = await Prober().probe(
        *compiled(
            server.target,
            "m",
            module(port=server.port, starttls=StartTLS.REQUIRED, tls_config=trusting(tls_ca)),
        )
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (
        Phase.STARTTLS,
        FailureReason.STARTTLS_NOT_OFFERED,
    )
    assert names(result) == ["connect", "banner", "ehlo", "helo"]
    assert _client_lines(server)[-2:] == [b"QUIT", b""]


async def test_no_helo_fallback_fails_at_ehlo(smtp_server_factory: Callable[..., AiosmtpdServer]) -> None:
    server = smtp_server_factory(faults=[Fault("ehlo", 550, "5.7.1")])
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, helo_fallback=False))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.EHLO, FailureReason.REPLY_PERMANENT)
    assert names(result) == ["connect", "banner", "ehlo"]
    assert b"HELO probe.test" not in _client_lines(server)
    assert _client_lines(server)[-2:] == [b"QUIT", b""]


async def test_ehlo_4xx_does_not_fall_back_to_helo(fault_server: FaultServer) -> None:
    """Only a 5xx means "EHLO not understood"; a 4xx is the server's trouble, not ours."""
    server = fault_server("ehlo", 421, "4.7.0")
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, helo_fallback=True)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.EHLO, FailureReason.REPLY_TEMPORARY)
    assert names(result) == ["connect", "banner", "ehlo"]


@pytest.mark.parametrize(("code", "enhanced"), [(421, "4.3.2"), (554, "5.3.0")])
async def test_bad_quit_reply_is_recorded_but_not_a_failure(
    fault_server: FaultServer, code: int, enhanced: str
) -> None:
    server = fault_server("quit", code, enhanced)
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port)))
    assert result.success, describe(result)
    assert result.failure is None
    quit_phase = result.phase(Phase.QUIT)
    assert quit_phase is not None
    assert (quit_phase.reply_code, quit_phase.enhanced_status) == (code, enhanced)
    assert await server.wait_closed()


@pytest.mark.parametrize(
    ("code", "enhanced", "reason"),
    [(421, "4.3.2", FailureReason.REPLY_TEMPORARY), (554, "5.3.0", FailureReason.REPLY_PERMANENT)],
)
async def test_bad_quit_reply_fails_with_fail_on_quit(
    fault_server: FaultServer, code: int, enhanced: str, reason: FailureReason
) -> None:
    server = fault_server("quit", code, enhanced)
    result = await Prober().probe(*compiled(server.target, "m", module(port=server.port, fail_on_quit=True)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.QUIT, reason)
    assert names(result) == ["connect", "banner", "ehlo", "quit"]
    assert result.phases[-1].reply_code == code
    assert await server.wait_closed()


async def test_good_quit_with_fail_on_quit_succeeds(smtp_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module(port=smtp_server.port, fail_on_quit=True))
    )
    assert result.success, describe(result)
    assert result.phases[-1].reply_code == 221


async def test_fault_that_closes_the_connection(fault_server: FaultServer) -> None:
    """421 and hang up at MAIL (a server shutting down): the reply is what counts."""
    server = fault_server("mail", 421, "4.3.2", "Shutting down", close=True)
    result = await Prober().probe(
        *compiled(server.target, "m", module("smtp_envelope", port=server.port, rcpt_to=("a@mail.test",)))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.MAIL, FailureReason.REPLY_TEMPORARY)
    assert result.phases[-1].reply == "4.3.2 Shutting down"
    assert await server.wait_closed()


async def test_rcpt_refused_at_second_recipient(
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
) -> None:
    """Several recipients: the RCPT phase covers them all and reports the first refusal."""
    server = await scripted_server(
        [
            *until_rcpt(),
            Send(b"250 2.1.5 Ok\r\n"),
            ExpectLine(),
            Send(b"550 5.1.1 <b@mail.test>: Recipient address rejected\r\n"),
            Answer(DEFAULT_REPLIES),
        ]
    )
    result = await Prober().probe(
        *compiled(
            server.target,
            "m",
            # One command at a time (the pipelined batch is test_pipelining.py's).
            module(
                "smtp_full",
                port=server.port,
                rcpt_to=("a@mail.test", "b@mail.test", "c@mail.test"),
                pipelining=Pipelining.NEVER,
            ),
        ),
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.RCPT, FailureReason.REPLY_PERMANENT)
    assert names(result) == ["connect", "banner", "ehlo", "mail", "rcpt"]
    rcpt = result.phases[-1]
    assert (rcpt.reply_code, rcpt.enhanced_status) == (550, "5.1.1")
    lines = server.connections[0].lines
    assert lines[2:] == [b"RCPT TO:<a@mail.test>\r\n", b"RCPT TO:<b@mail.test>\r\n", b"QUIT\r\n"]
    assert await server.wait_closed()
