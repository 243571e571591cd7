"""XOAUTH2 and OAUTHBEARER through the probe engine over real sockets: scripted peers and
aiosmtpd (with XOAUTH2/OAUTHBEARER handlers, tests/servers/aiosmtpd_server.py), the token
read from its file or variable at every probe, and never shown."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from smtp_exporter.config.schema import AuthConfig, AuthMechanism, ModuleConfig, StartTLS
from smtp_exporter.model import FailureReason, Phase, ProbeResult
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.probe.common import FULL_PHASES, compiled, describe, module, names, trusting
from tests.servers.aiosmtpd_server import OAUTH_ERROR_CHALLENGES, AiosmtpdServer
from tests.servers.scripted import (
    BANNER,
    DEFAULT_REPLIES,
    Answer,
    ExpectLine,
    ScriptedServer,
    Send,
    starttls_conversation,
)
from tests.servers.tls import TestCA

USER = "probe@example.org"
TOKEN = "ya29.a0Ad52N-first_token.value~1"
NEW_TOKEN = "ya29.a0Ad52N-second_token.value~2"
EHLO_OAUTH = b"250-mail.test\r\n250-AUTH PLAIN XOAUTH2 OAUTHBEARER\r\n250 8BITMIME\r\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def xoauth2(token: str) -> str:
    return b64(f"user={USER}\x01auth=Bearer {token}\x01\x01")


def oauthbearer(token: str) -> str:
    return b64(f"n,a={USER},\x01auth=Bearer {token}\x01\x01")


def shown(result: ProbeResult) -> list[str]:
    """Every way a result is shown: transcript, JSON, text, repr, failure message."""
    return [
        "\n".join(line.text for line in result.transcript),
        json.dumps(probe_json(result)),
        format_text(result),
        repr(result),
        "" if result.failure is None else result.failure.message,
    ]


def assert_no_token(result: ProbeResult, *tokens: str) -> None:
    for token in tokens:
        for form in (token, xoauth2(token), oauthbearer(token)):
            for text in shown(result):
                assert form not in text


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "oauth-token"
    path.write_text(token + "\n")  # as an agent's `echo` writes it
    return path


def oauth_module(
    mechanism: AuthMechanism, *, port: int, ca: TestCA | None = None, **source: str
) -> ModuleConfig:
    tls = {} if ca is None else {"starttls": StartTLS.REQUIRED, "tls_config": trusting(ca)}
    return module(
        "smtp_full",
        port=port,
        auth=AuthConfig(mechanism=mechanism, username=USER, **source),
        rcpt_to=("postmaster@mail.test",),
        **tls,
    )


# -- scripted peers ---------------------------------------------------------------------


async def test_xoauth2_success_with_a_scripted_peer(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tls_ca: TestCA, tmp_path: Path
) -> None:
    server = await scripted_server(
        starttls_conversation(
            tls_ca.server_cert.server_context(), EHLO=EHLO_OAUTH, AUTH=b"235 2.7.0 Accepted\r\n"
        )
    )
    path = token_file(tmp_path, TOKEN)
    settings = oauth_module(AuthMechanism.XOAUTH2, port=server.port, ca=tls_ca, token_file=str(path))
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.success, describe(result)
    assert names(result) == list(FULL_PHASES)
    assert await server.wait_closed(5)
    (connection,) = server.connections
    auth_lines = [line for line in connection.lines if line.startswith(b"AUTH")]
    assert auth_lines == [f"AUTH XOAUTH2 {xoauth2(TOKEN)}\r\n".encode()]
    client = [line.text for line in result.transcript if line.direction == "C"]
    assert "AUTH XOAUTH2 <redacted>" in client
    assert_no_token(result, TOKEN)


async def test_oauthbearer_error_challenge_with_a_scripted_peer(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tmp_path: Path
) -> None:
    error = {"status": "invalid_token", "scope": "https://outlook.office.com/SMTP.Send"}
    server = await scripted_server(
        [
            Send(BANNER),
            ExpectLine(),
            Send(EHLO_OAUTH),
            ExpectLine(),
            Send(b"334 " + base64.b64encode(json.dumps(error).encode()) + b"\r\n"),
            ExpectLine(),
            Send(b"535 5.7.3 Authentication unsuccessful\r\n"),
            Answer(DEFAULT_REPLIES),
        ]
    )
    path = token_file(tmp_path, TOKEN)
    settings = oauth_module(AuthMechanism.OAUTHBEARER, port=server.port, token_file=str(path))
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    assert result.failure.message == (
        "unexpected reply to auth: 535 5.7.3 Authentication unsuccessful (error challenge: "
        '{"status":"invalid_token","scope":"https://outlook.office.com/SMTP.Send"})'
    )
    assert await server.wait_closed(5)
    (connection,) = server.connections
    assert connection.lines[1:] == [
        f"AUTH OAUTHBEARER {oauthbearer(TOKEN)}\r\n".encode(),
        b"AQ==\r\n",
        b"QUIT\r\n",
    ]
    assert "mail" not in names(result)
    assert_no_token(result, TOKEN)


async def test_missing_token_file_at_probe_time_is_a_local_error(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tmp_path: Path
) -> None:
    """The agent's file vanished (or was never written): the exporter's side, and nothing
    reaches the server."""
    server = await scripted_server([Send(BANNER), Answer({**DEFAULT_REPLIES, "EHLO": EHLO_OAUTH})])
    missing = tmp_path / "gone"
    settings = oauth_module(AuthMechanism.XOAUTH2, port=server.port, token_file=str(missing))
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.AUTH, FailureReason.LOCAL_ERROR)
    assert result.failure.message == (
        f'the exporter could not run this probe: OAuth token: cannot read "{missing}": No such file or directory'
    )
    assert server.connections == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"ya29 two words", "does not hold a bearer token")],
    ids=["empty", "newline-only", "not-a-token"],
)
async def test_unusable_token_file_is_a_local_error(
    scripted_server: Callable[..., Awaitable[ScriptedServer]], tmp_path: Path, content: bytes, problem: str
) -> None:
    server = await scripted_server([Send(BANNER), Answer({**DEFAULT_REPLIES, "EHLO": EHLO_OAUTH})])
    path = tmp_path / "token"
    path.write_bytes(content)
    settings = oauth_module(AuthMechanism.OAUTHBEARER, port=server.port, token_file=str(path))
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert result.failure.reason is FailureReason.LOCAL_ERROR
    assert problem in result.failure.message
    assert server.connections == []


# -- aiosmtpd ---------------------------------------------------------------------------


@pytest.fixture
def oauth_server(smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA) -> AiosmtpdServer:
    return smtp_server_factory(starttls=tls_ca.server_cert, oauth_tokens={USER: TOKEN})


@pytest.mark.parametrize("mechanism", [AuthMechanism.XOAUTH2, AuthMechanism.OAUTHBEARER])
async def test_token_rotation_between_probes(
    oauth_server: AiosmtpdServer, tls_ca: TestCA, tmp_path: Path, mechanism: AuthMechanism
) -> None:
    """Probe 1 succeeds; the provider then accepts only a new token, and probe 2, with the file
    not yet rewritten, fails with the server's decoded error challenge; the agent rewrites the
    file and probe 3 sends the new token, with no reload in between."""
    path = token_file(tmp_path, TOKEN)
    target = compiled(
        oauth_server.target,
        "m",
        oauth_module(mechanism, port=oauth_server.port, ca=tls_ca, token_file=str(path)),
    )
    prober = Prober()
    first = await prober.probe(*target)
    assert first.success, describe(first)
    oauth_server.oauth_tokens[USER] = NEW_TOKEN
    stale = await prober.probe(*target)
    assert stale.failure is not None, describe(stale)
    assert (stale.failure.phase, stale.failure.reason) == (Phase.AUTH, FailureReason.AUTH_FAILED)
    status = OAUTH_ERROR_CHALLENGES[mechanism.value]["status"]
    assert f'(error challenge: {{"status":"{status}",' in stale.failure.message
    path.write_text(NEW_TOKEN + "\n")
    third = await prober.probe(*target)
    assert third.success, describe(third)

    attempts = oauth_server.auth_attempts
    assert [(a.mechanism, a.login, a.password, a.success) for a in attempts] == [
        (mechanism.value, USER, TOKEN, True),
        (mechanism.value, USER, TOKEN, False),
        (mechanism.value, USER, NEW_TOKEN, True),
    ]
    # The error challenge was answered as each mechanism requires, then the 535 ended it.
    assert attempts[1].challenge_answer == (b"\x01" if mechanism is AuthMechanism.OAUTHBEARER else b"")
    assert stale.phases[-1].reply_code == 535
    messages = await oauth_server.wait_messages(2)
    assert [m.login for m in messages] == [USER, USER]
    for result in (first, stale, third):
        assert_no_token(result, TOKEN, NEW_TOKEN)


async def test_token_env_is_read_at_every_probe(
    oauth_server: AiosmtpdServer, tls_ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_EXPORTER_TEST_OAUTH_TOKEN", TOKEN)
    target = compiled(
        oauth_server.target,
        "m",
        oauth_module(
            AuthMechanism.XOAUTH2,
            port=oauth_server.port,
            ca=tls_ca,
            token_env="SMTP_EXPORTER_TEST_OAUTH_TOKEN",
        ),
    )
    prober = Prober()
    first = await prober.probe(*target)
    assert first.success, describe(first)
    oauth_server.oauth_tokens[USER] = NEW_TOKEN
    monkeypatch.setenv("SMTP_EXPORTER_TEST_OAUTH_TOKEN", NEW_TOKEN)
    second = await prober.probe(*target)
    assert second.success, describe(second)
    assert [a.password for a in oauth_server.auth_attempts] == [TOKEN, NEW_TOKEN]
    monkeypatch.delenv("SMTP_EXPORTER_TEST_OAUTH_TOKEN")
    unset = await prober.probe(*target)
    assert unset.failure is not None
    assert (unset.failure.reason, unset.failure.message) == (
        FailureReason.LOCAL_ERROR,
        "the exporter could not run this probe: OAuth token: the environment variable token_env names is not set",
    )
    assert len(oauth_server.connections) == 2
    for result in (first, second):
        assert_no_token(result, TOKEN, NEW_TOKEN)


async def test_no_token_to_a_server_without_the_mechanism(
    smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA, tmp_path: Path
) -> None:
    """A server offering only PLAIN/LOGIN/CRAM-MD5 inside TLS: the token never leaves."""
    server = smtp_server_factory(starttls=tls_ca.server_cert, auth_users={"someone": "pw"})
    path = token_file(tmp_path, TOKEN)
    settings = oauth_module(AuthMechanism.OAUTHBEARER, port=server.port, ca=tls_ca, token_file=str(path))
    result = await Prober().probe(*compiled(server.target, "m", settings))
    assert result.failure is not None, describe(result)
    assert (result.failure.reason, result.failure.message) == (
        FailureReason.AUTH_FAILED,
        "the server does not offer AUTH OAUTHBEARER (offers: CRAM-MD5 LOGIN PLAIN)",
    )
    assert await server.wait_closed()
    received = b"".join(bytes(c.received) for c in server.connections)
    assert TOKEN.encode() not in received and b"AUTH" not in received.split(b"STARTTLS")[-1]


async def test_the_token_is_not_logged(
    oauth_server: AiosmtpdServer, tls_ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = token_file(tmp_path, "ya29.wrong-token")
    settings = oauth_module(AuthMechanism.XOAUTH2, port=oauth_server.port, ca=tls_ca, token_file=str(path))
    with caplog.at_level(logging.DEBUG):
        result = await Prober().probe(*compiled(oauth_server.target, "m", settings))
    assert result.failure is not None and result.failure.reason is FailureReason.AUTH_FAILED
    assert oauth_server.auth_attempts[0].password == "ya29.wrong-token"  # it was really sent
    assert "ya29.wrong-token" not in caplog.text and xoauth2("ya29.wrong-token") not in caplog.text
    assert_no_token(result, "ya29.wrong-token")
