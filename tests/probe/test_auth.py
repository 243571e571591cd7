"""AUTH PLAIN, LOGIN and CRAM-MD5 against aiosmtpd inside STARTTLS; secrets never shown."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from smtp_exporter.config.schema import AuthMechanism, ModuleConfig, StartTLS
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, Phase, ProbeResult
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.probe.common import FULL_PHASES, auth, compiled, describe, module, names, trusting
from tests.servers.aiosmtpd_server import TEST_PASSWORD, TEST_USERNAME, AiosmtpdServer
from tests.servers.scripted import (
    BANNER,
    DEFAULT_REPLIES,
    EHLO_REPLY,
    Answer,
    ExpectLine,
    ScriptedServer,
    Send,
    Step,
    starttls_conversation,
)
from tests.servers.scripted import StartTLS as StartTLSStep
from tests.servers.tls import TestCA

MECHANISMS = [AuthMechanism.PLAIN, AuthMechanism.LOGIN, AuthMechanism.CRAM_MD5]
WRONG_PASSWORD = "wrong-Pa55word-xyzzy"


def secret_forms(username: str, password: str) -> list[str]:
    """The password as it could leak: as is, and base64-encoded the ways AUTH sends it."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return [password, b64(password), b64(f"\0{username}\0{password}"), b64(f"{username}\0{password}")]


def assert_no_secret(result: ProbeResult, password: str) -> None:
    shown = [
        "\n".join(line.text for line in result.transcript),
        json.dumps(probe_json(result)),
        format_text(result),
        repr(result),
        "" if result.failure is None else result.failure.message,
    ]
    for form in secret_forms(TEST_USERNAME, password):
        for text in shown:
            assert form not in text


def _auth_module(
    server: AiosmtpdServer, ca: TestCA, mechanism: AuthMechanism, password: str = TEST_PASSWORD
) -> ModuleConfig:
    return module(
        "smtp_full",
        port=server.port,
        starttls=StartTLS.REQUIRED,
        tls_config=trusting(ca),
        auth=auth(mechanism, password=password),
        rcpt_to=("postmaster@mail.test",),
    )


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_auth_succeeds(auth_server: AiosmtpdServer, tls_ca: TestCA, mechanism: AuthMechanism) -> None:
    result = await Prober().probe(
        *compiled(auth_server.target, "m", _auth_module(auth_server, tls_ca, mechanism))
    )
    assert result.success, describe(result)
    assert names(result) == list(FULL_PHASES)
    auth_phase = result.phase(Phase.AUTH)
    assert auth_phase is not None and auth_phase.reply_code == 235
    (attempt,) = auth_server.auth_attempts
    assert (attempt.mechanism, attempt.login, attempt.success) == (mechanism.value, TEST_USERNAME, True)
    (message,) = await auth_server.wait_messages(1)
    assert message.login == TEST_USERNAME and message.tls
    assert_no_secret(result, TEST_PASSWORD)


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_wrong_password(auth_server: AiosmtpdServer, tls_ca: TestCA, mechanism: AuthMechanism) -> None:
    result = await Prober().probe(
        *compiled(
            auth_server.target, "m", _auth_module(auth_server, tls_ca, mechanism, password=WRONG_PASSWORD)
        )
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert names(result)[-1] == "auth"
    auth_phase = result.phases[-1]
    assert auth_phase.reply_code == 535
    assert auth_phase.enhanced_status == "5.7.8"
    (attempt,) = auth_server.auth_attempts
    assert attempt.mechanism == mechanism.value and not attempt.success
    assert auth_server.messages == []
    # The connection was fine: QUIT was said (inside TLS), then the socket closed.
    assert bytes(auth_server.connections[0].received).endswith(b"QUIT\r\n")
    assert await auth_server.wait_closed()
    assert_no_secret(result, WRONG_PASSWORD)


async def test_auto_picks_the_strongest_offered(auth_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    result = await Prober().probe(
        *compiled(auth_server.target, "m", _auth_module(auth_server, tls_ca, AuthMechanism.AUTO))
    )
    assert result.success, describe(result)
    assert "CRAM-MD5" in dict(result.server.extensions)["AUTH"]
    (attempt,) = auth_server.auth_attempts
    assert attempt.mechanism == "CRAM-MD5" and attempt.success
    assert_no_secret(result, TEST_PASSWORD)


async def test_auto_with_no_auth_offered(
    smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA
) -> None:
    server = smtp_server_factory(starttls=tls_ca.server_cert)  # no auth_users: no AUTH keyword
    result = await Prober().probe(
        *compiled(server.target, "m", _auth_module(server, tls_ca, AuthMechanism.AUTO))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert "AUTH" not in dict(result.server.extensions)
    assert b"AUTH" not in bytes(server.connections[0].received)
    assert "mail" not in names(result)


async def test_transcript_shows_auth_redacted(auth_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    result = await Prober().probe(
        *compiled(auth_server.target, "m", _auth_module(auth_server, tls_ca, AuthMechanism.LOGIN))
    )
    assert result.success, describe(result)
    client = [line.text for line in result.transcript if line.direction == "C"]
    start = client.index("AUTH LOGIN")
    assert client[start + 1 : start + 3] == ["<redacted>", "<redacted>"]


@pytest.mark.parametrize(
    ("mechanism", "steps", "reason"),
    [
        (AuthMechanism.CRAM_MD5, [b"334 !!! not base64\r\n"], FailureReason.PROTOCOL_ERROR),
        (AuthMechanism.PLAIN, [b"334 \r\n"], FailureReason.AUTH_FAILED),  # initial response refused
        (
            AuthMechanism.LOGIN,
            [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"334 and more?\r\n"],
            FailureReason.AUTH_FAILED,
        ),
        (
            AuthMechanism.LOGIN,
            [b"454 4.7.0 Temporary authentication failure\r\n"],
            FailureReason.REPLY_TEMPORARY,
        ),
    ],
    ids=["cram-bad-challenge", "plain-334", "login-endless", "login-454"],
)
async def test_odd_auth_exchanges(
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
    mechanism: AuthMechanism,
    steps: list[bytes],
    reason: FailureReason,
) -> None:
    script: list[Step] = [
        Send(BANNER),
        ExpectLine(),
        Send(b"250-mail.test\r\n250 AUTH CRAM-MD5 PLAIN LOGIN\r\n"),
    ]
    for reply in steps:
        script += [ExpectLine(), Send(reply)]
    script.append(Answer(DEFAULT_REPLIES))  # QUIT gets its 221
    server = await scripted_server(script)
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, auth=auth(mechanism), timeout=2.0))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.AUTH, reason)
    assert "mail" not in names(result)
    assert result.duration_seconds < 2.0
    assert_no_secret(result, TEST_PASSWORD)


@pytest.mark.parametrize(
    ("ehlo_tls", "message"),
    [
        (EHLO_REPLY, "the server offers no AUTH mechanism"),
        (
            b"250-mail.test\r\n250-AUTH LOGIN\r\n250 8BITMIME\r\n",
            "the server does not offer AUTH PLAIN (offers: LOGIN)",
        ),
    ],
    ids=["no-auth", "not-plain"],
)
async def test_explicit_mechanism_not_offered_after_starttls(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tls_ca: TestCA, ehlo_tls: bytes, message: str
) -> None:
    """The EHLO inside TLS decides: no AUTH PLAIN in it, no credentials on the wire, only QUIT."""
    server = await scripted_server(
        starttls_conversation(tls_ca.server_cert.server_context(), EHLO=ehlo_tls, AUTH=b"235 2.7.0 ok\r\n")
    )
    settings = module(
        port=server.port,
        starttls=StartTLS.REQUIRED,
        tls_config=trusting(tls_ca),
        auth=auth(AuthMechanism.PLAIN),
    )
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason, result.failure.message) == (
        Phase.AUTH,
        FailureReason.AUTH_FAILED,
        message,
    )
    assert await server.wait_closed(5)
    (connection,) = server.connections
    after_tls = [line.split()[0] for line in connection.lines[2:]]  # EHLO and STARTTLS in the clear
    assert after_tls == [b"EHLO", b"QUIT"]
    assert_no_secret(result, TEST_PASSWORD)


# Exim with `auth_advertise_hosts` unset for clear text, inverted: AUTH and a private keyword
# offered only before STARTTLS, another SIZE inside TLS.
EHLO_CLEAR_WITH_AUTH = (
    b"250-mail.test\r\n250-AUTH CRAM-MD5 PLAIN\r\n250-X-CLEAR\r\n250-SIZE 100\r\n250 STARTTLS\r\n"
)
EHLO_TLS_WITHOUT_AUTH = b"250-mail.test\r\n250-PIPELINING\r\n250 SIZE 2000\r\n"


def _clear_auth_script(context: ssl.SSLContext) -> list[Step]:
    return [
        Send(BANNER),
        ExpectLine(),
        Send(EHLO_CLEAR_WITH_AUTH),
        ExpectLine(),
        Send(b"220 2.0.0 Ready to start TLS\r\n"),
        StartTLSStep(context),
        Answer({**DEFAULT_REPLIES, "EHLO": EHLO_TLS_WITHOUT_AUTH, "AUTH": b"503 5.5.1 not advertised\r\n"}),
    ]


async def test_auth_offered_only_before_starttls_is_not_used(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tls_ca: TestCA
) -> None:
    """RFC 3207 4.2: the clear-text EHLO is forgotten, so its AUTH is not used inside TLS."""
    server = await scripted_server(_clear_auth_script(tls_ca.server_cert.server_context()))
    settings = module(port=server.port, starttls=StartTLS.REQUIRED, tls_config=trusting(tls_ca), auth=auth())
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason, result.failure.message) == (
        Phase.AUTH,
        FailureReason.AUTH_FAILED,
        "the server offers no AUTH mechanism",
    )
    assert await server.wait_closed(5)
    (connection,) = server.connections
    assert [line.split()[0] for line in connection.lines] == [b"EHLO", b"STARTTLS", b"EHLO", b"QUIT"]


async def test_server_facts_are_those_of_the_ehlo_inside_tls(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tls_ca: TestCA
) -> None:
    server = await scripted_server(_clear_auth_script(tls_ca.server_cert.server_context()))
    settings = module(port=server.port, starttls=StartTLS.REQUIRED, tls_config=trusting(tls_ca))
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.success, describe(result)
    assert probe_json(result)["server"]["extensions"] == {"PIPELINING": [], "SIZE": ["2000"], "STARTTLS": []}
    text = render_probe_result(result, openmetrics=False).decode()
    offered = {
        s.labels["extension"]
        for f in parse_text(text)
        for s in f.samples
        if s.name == "smtp_probe_extension_info"
    }
    assert offered == {"PIPELINING", "SIZE", "STARTTLS"}
    assert "smtp_probe_max_message_size_bytes 2000" in text
