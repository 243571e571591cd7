"""Self-tests of the loopback peers: each fixture works, with a plain client."""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import ssl
from collections.abc import Awaitable, Callable

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest

from smtp_exporter.protocol import Reply, ReplyParser
from tests import helpers
from tests.servers.aiosmtpd_server import (
    FAULT_PHASES,
    OAUTH_ERROR_CHALLENGES,
    TEST_PASSWORD,
    TEST_USERNAME,
    AiosmtpdServer,
)
from tests.servers.dns_server import DnsServer
from tests.servers.scripted import (
    Close,
    ExpectLine,
    HalfClose,
    Reset,
    ScriptedServer,
    Send,
    Sleep,
    StartTLS,
    close_after_ehlo,
    endless_multiline,
    garbage_greeting,
    megabyte_line,
    minimal_conversation,
    silence,
    starttls_conversation,
    starttls_no_tls,
    trickle,
)
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import ServerCert, TestCA

MESSAGE = b"Subject: test\r\n\r\nfirst\r\n.hidden line\r\n..two dots\r\nlast\r\n"

BANNER_LINE = b"220 mail.test ESMTP\r\n"

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]


class RawClient:
    """A blocking SMTP client over a raw socket that reads replies with the project's parser."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.parser = ReplyParser()
        self.pending: list[Reply] = []

    def reply(self) -> Reply | None:
        """The next reply, or None when the server closed the connection first."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    def command(self, line: bytes) -> Reply | None:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


# -- aiosmtpd ------------------------------------------------------------------------


def test_plain_server_records_envelope_content_and_raw_bytes(smtp_server: AiosmtpdServer) -> None:
    assert smtp_server.port != 0
    with smtplib.SMTP(*smtp_server.address, timeout=5) as client:
        code, text = client.ehlo("probe.test")
        assert code == 250
        assert b"STARTTLS" not in text
        assert b"AUTH" not in text
        client.sendmail("from@example.test", ["a@example.test", "b@example.test"], MESSAGE)
    (message,) = smtp_server.wait_messages_blocking(1)
    assert message.mail_from == "from@example.test"
    assert message.rcpt_tos == ("a@example.test", "b@example.test")
    assert message.helo == "probe.test"
    assert not message.tls
    assert message.content == MESSAGE  # the server removed the dot-stuffing smtplib added
    assert b"\r\n..hidden line\r\n...two dots\r\n" in smtp_server.connections[0].received
    assert smtp_server.wait_closed_blocking(5)
    assert smtp_server.connections_open == 0


def test_open_connection_is_seen_as_open(smtp_server: AiosmtpdServer) -> None:
    client = RawClient(smtp_server.address)
    try:
        assert client.reply() is not None
        assert smtp_server.connections_open == 1
        assert not smtp_server.wait_closed_blocking(0.1)
    finally:
        client.close()
    assert smtp_server.wait_closed_blocking(5)


def test_starttls_certificate_verifies_against_the_ca(
    starttls_server: AiosmtpdServer, tls_ca: TestCA
) -> None:
    with smtplib.SMTP(*starttls_server.address, timeout=5) as client:
        assert b"STARTTLS" in client.ehlo()[1]
        client.starttls(context=tls_ca.client_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert b"STARTTLS" not in client.ehlo()[1]
        client.sendmail("from@example.test", ["to@example.test"], MESSAGE)
    (message,) = starttls_server.wait_messages_blocking(1)
    assert message.tls
    assert starttls_server.connections[0].tls


def test_ca_file_is_a_pem_ca_certificate(tls_ca: TestCA) -> None:
    context = ssl.create_default_context(cafile=tls_ca.ca_file)
    (ca,) = context.get_ca_certs()
    assert ca["subject"]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (TestCA.expired, "certificate has expired"),
        (TestCA.not_yet_valid, "certificate is not yet valid"),
        (TestCA.wrong_host, "mismatch, certificate is not valid"),
        (TestCA.self_signed, "self-signed certificate"),
    ],
)
def test_bad_certificates_fail_verification_for_the_right_reason(
    smtp_server_factory: Callable[..., AiosmtpdServer],
    tls_ca: TestCA,
    make: Callable[[TestCA], ServerCert],
    error: str,
) -> None:
    server = smtp_server_factory(implicit_tls=make(tls_ca))
    with pytest.raises(ssl.SSLCertVerificationError, match=error):
        smtplib.SMTP_SSL(*server.address, timeout=5, context=tls_ca.client_context())
    # Without verification the handshake itself works: the certificate is just bad.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL(*server.address, timeout=5, context=insecure) as client:
        assert client.noop()[0] == 250


def test_smtps_server_speaks_tls_at_once(smtps_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    with smtplib.SMTP_SSL(*smtps_server.address, timeout=5, context=tls_ca.client_context()) as client:
        assert client.ehlo()[0] == 250
        client.sendmail("from@example.test", ["to@example.test"], MESSAGE)
    (message,) = smtps_server.wait_messages_blocking(1)
    assert message.tls


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_server_accepts_the_test_credentials(
    auth_server: AiosmtpdServer, tls_ca: TestCA, mechanism: str
) -> None:
    with smtplib.SMTP(*auth_server.address, timeout=5) as client:
        assert b"AUTH" not in client.ehlo()[1]  # only inside TLS
        client.starttls(context=tls_ca.client_context())
        client.ehlo()
        client.user, client.password = TEST_USERNAME, TEST_PASSWORD
        authobject = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
        code, _ = client.auth(mechanism, authobject, initial_response_ok=mechanism != "LOGIN")
        assert code == 235
        client.sendmail("from@example.test", ["to@example.test"], MESSAGE)
    assert [(a.mechanism, a.login, a.success) for a in auth_server.auth_attempts] == [
        (mechanism, TEST_USERNAME, True)
    ]
    assert auth_server.messages[0].login == TEST_USERNAME


def test_auth_server_rejects_a_wrong_password(auth_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    with smtplib.SMTP(*auth_server.address, timeout=5) as client:
        client.starttls(context=tls_ca.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.login(TEST_USERNAME, "wrong")
        assert caught.value.smtp_code == 535
    assert auth_server.auth_attempts[-1].success is False


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_oauth_server_speaks_with_smtplib(
    smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA, mechanism: str
) -> None:
    """The XOAUTH2/OAUTHBEARER handlers checked with another client (smtplib): a wrong token gets
    the error challenge, its answer the 535; the right one 235."""
    server = smtp_server_factory(starttls=tls_ca.server_cert, oauth_tokens={"u@x.test": "ya29.good"})
    challenges: list[bytes] = []
    head = "user=u@x.test" if mechanism == "XOAUTH2" else "n,a=u@x.test,"

    def respond(token: str) -> Callable[..., str]:
        def authobject(challenge: bytes | None = None) -> str:
            if challenge is None:
                return f"{head}\x01auth=Bearer {token}\x01\x01"
            challenges.append(challenge)
            return "" if mechanism == "XOAUTH2" else "\x01"

        return authobject

    with smtplib.SMTP(*server.address, timeout=5) as client:
        client.starttls(context=tls_ca.client_context())
        client.ehlo()
        assert mechanism in client.esmtp_features["auth"].split()
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.auth(mechanism, respond("ya29.bad"))
        assert caught.value.smtp_code == 535
        code, _ = client.auth(mechanism, respond("ya29.good"))
        assert code == 235
    assert [json.loads(c) for c in challenges] == [OAUTH_ERROR_CHALLENGES[mechanism]]
    assert [(a.login, a.password, a.success, a.challenge_answer) for a in server.auth_attempts] == [
        ("u@x.test", "ya29.bad", False, b"" if mechanism == "XOAUTH2" else b"\x01"),
        ("u@x.test", "ya29.good", True, None),
    ]


def test_oauth_mechanisms_are_offered_only_with_oauth_tokens(
    auth_server: AiosmtpdServer, tls_ca: TestCA
) -> None:
    with smtplib.SMTP(*auth_server.address, timeout=5) as client:
        client.starttls(context=tls_ca.client_context())
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["CRAM-MD5", "LOGIN", "PLAIN"]


# The commands that reach each phase, on a plain server with AUTH offered without TLS.
_REACH = {
    "banner": [],
    "ehlo": [b"EHLO probe.test"],
    "helo": [b"HELO probe.test"],
    "auth": [b"EHLO probe.test", b"AUTH PLAIN AHByb2JlAHg="],
    "mail": [b"EHLO probe.test", b"MAIL FROM:<a@example.test>"],
    "rcpt": [b"EHLO probe.test", b"MAIL FROM:<a@example.test>", b"RCPT TO:<b@example.test>"],
    "data": [b"EHLO probe.test", b"MAIL FROM:<a@example.test>", b"RCPT TO:<b@example.test>", b"DATA"],
    "message": [
        b"EHLO probe.test",
        b"MAIL FROM:<a@example.test>",
        b"RCPT TO:<b@example.test>",
        b"DATA",
        b"Subject: x\r\n\r\nbody\r\n.",
    ],
    "rset": [b"EHLO probe.test", b"RSET"],
    "quit": [b"EHLO probe.test", b"QUIT"],
}


@pytest.mark.parametrize("code", [451, 550])
@pytest.mark.parametrize("phase", sorted(_REACH))
def test_fault_injected_at_each_phase(
    fault_server: Callable[..., AiosmtpdServer], phase: str, code: int
) -> None:
    enhanced = f"{code // 100}.3.0"
    server = fault_server(phase, code, enhanced, auth_users={"probe": "x"}, auth_require_tls=False)
    client = RawClient(server.address)
    try:
        replies = [client.reply()] + [client.command(line) for line in _REACH[phase]]
    finally:
        client.close()
    *before, last = replies
    assert all(r is not None and r.code_class in (2, 3) for r in before), before
    assert last == Reply(code, (f"{enhanced} Injected fault",))


def test_fault_at_starttls_and_ehlo_tls(fault_server: Callable[..., AiosmtpdServer], tls_ca: TestCA) -> None:
    server = fault_server("starttls", 454, "4.7.0", "TLS not available", starttls=tls_ca.server_cert)
    with smtplib.SMTP(*server.address, timeout=5) as client:
        client.ehlo()
        assert client.docmd("STARTTLS") == (454, b"4.7.0 TLS not available")
    server = fault_server("ehlo_tls", 421, "4.3.2", "going down", starttls=tls_ca.server_cert)
    with smtplib.SMTP(*server.address, timeout=5) as client:
        assert client.ehlo()[0] == 250  # before TLS: normal
        client.starttls(context=tls_ca.client_context())
        assert client.ehlo() == (421, b"4.3.2 going down")


def test_fault_with_close_drops_the_connection(fault_server: Callable[..., AiosmtpdServer]) -> None:
    server = fault_server("mail", 421, "4.4.2", "bye", close=True)
    client = RawClient(server.address)
    try:
        client.reply()
        client.command(b"EHLO probe.test")
        assert client.command(b"MAIL FROM:<a@example.test>") == Reply(421, ("4.4.2 bye",))
        assert client.reply() is None
    finally:
        client.close()


def test_fault_phases_cover_the_model_phases() -> None:
    from smtp_exporter.model import Phase

    # The SMTP phases a fault can be planted in; the delivery check's IMAP phases are another
    # server's (tests/delivery).
    imap = {"imap_connect", "imap_tls", "imap_login", "imap_select", "delivery", "imap_fetch", "imap_logout"}
    talking = {p.value for p in Phase} - {"resolve", "connect", "tls"} - imap
    assert talking == FAULT_PHASES
    assert set(_REACH) | {"starttls", "ehlo_tls"} == FAULT_PHASES


# -- smtp-sink -----------------------------------------------------------------------


def test_smtp_sink_greets_and_accepts_a_message(smtp_sink: SmtpSink) -> None:
    assert smtp_sink.port != 0
    with smtplib.SMTP(*smtp_sink.address, timeout=5) as client:
        code, text = client.ehlo("probe.test")
        assert code == 250 and b"PIPELINING" in text
        client.sendmail("from@example.test", ["to@example.test"], MESSAGE)
    (message,) = smtp_sink.wait_messages(1)
    assert message.mail_args == "<from@example.test>"
    assert message.rcpt_args == ("<to@example.test>",)
    assert message.helo == "probe.test"
    assert message.content == MESSAGE.replace(b"\r\n", b"\n")


def test_smtp_sink_banner_names_its_host(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink_factory(hostname="sink.example.test")
    client = RawClient(sink.address)
    try:
        banner = client.reply()
    finally:
        client.close()
    assert banner is not None and banner.code == 220
    assert banner.lines[0].startswith("sink.example.test")


@pytest.mark.parametrize(
    ("options", "code_class"), [({"hard_reject": ["RCPT"]}, 5), ({"soft_reject": ["RCPT"]}, 4)]
)
def test_smtp_sink_rejects_rcpt(
    smtp_sink_factory: Callable[..., SmtpSink], options: dict[str, list[str]], code_class: int
) -> None:
    sink = smtp_sink_factory(**options)
    with smtplib.SMTP(*sink.address, timeout=5) as client:
        client.ehlo()
        assert client.mail("a@example.test")[0] == 250
        code, text = client.rcpt("b@example.test")
    assert code // 100 == code_class
    assert text.startswith(f"{code_class}.3.0".encode())


def test_smtp_sink_disconnects_and_shuts_down(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink_factory(disconnect=["MAIL"], shutdown=["HELO"], pipelining=False)
    client = RawClient(sink.address)
    try:
        client.reply()
        ehlo = client.command(b"EHLO probe.test")
        assert ehlo is not None and "PIPELINING" not in ehlo.lines
        assert client.command(b"MAIL FROM:<a@example.test>") is None
    finally:
        client.close()
    client = RawClient(sink.address)
    try:
        client.reply()
        reply = client.command(b"HELO probe.test")
        assert reply is not None and reply.code == 421
    finally:
        client.close()


def test_smtp_sink_on_ipv6_loopback(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink_factory(host="::1")
    client = RawClient(sink.address)
    try:
        banner = client.reply()
    finally:
        client.close()
    assert banner is not None and banner.code == 220


def test_smtp_sink_bad_option_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="delay"):
        SmtpSink(command_delays={"RCPT": -1}).start()


def test_smtp_sink_is_reaped_on_exit(smtp_sink_factory: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink_factory()
    assert sink.returncode is None
    sink.stop()
    assert sink.returncode is not None
    with pytest.raises(OSError):
        socket.create_connection(sink.address, timeout=1).close()


# -- require_binary ------------------------------------------------------------------


def test_require_binary_finds_sbin_programs() -> None:
    path = helpers.require_binary("smtp-sink")
    assert path.endswith("/smtp-sink")


def test_require_binary_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(helpers.REQUIRE_ALL_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        helpers.require_binary("no-such-binary-for-smtp-exporter")
    monkeypatch.setenv(helpers.REQUIRE_ALL_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus"):
        helpers.DEBIAN_PACKAGES["no-such-promtool"] = "prometheus"
        try:
            helpers.require_binary("no-such-promtool")
        finally:
            del helpers.DEBIAN_PACKAGES["no-such-promtool"]


# -- scripted ------------------------------------------------------------------------


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


async def test_scripted_minimal_conversation(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(minimal_conversation(RCPT=b"550 5.1.1 No such user\r\n"))
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"EHLO probe.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRSET\r\nQUIT\r\n")
    replies = ReplyParser().feed(await _read_all(reader))
    writer.close()
    assert [r.code for r in replies] == [220, 250, 250, 550, 250, 221]
    assert await server.wait_closed(5)
    (connection,) = server.connections
    assert connection.lines[0] == b"EHLO probe.test\r\n"
    assert connection.server_closed and not connection.client_closed


async def test_scripted_data_is_read_until_the_dot(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(minimal_conversation())
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nS: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    replies = ReplyParser().feed(await _read_all(reader))
    writer.close()
    assert [r.code for r in replies] == [220, 250, 250, 250, 354, 250, 221]


async def test_scripted_garbage_greeting(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(garbage_greeting())
    reader, writer = await asyncio.open_connection(*server.address)
    assert (await reader.readline()).startswith(b"SSH-2.0-")
    writer.close()
    assert await server.wait_closed(5)
    assert server.connections[0].client_closed


async def test_scripted_silence_and_leak_detection(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(silence())
    reader, writer = await asyncio.open_connection(*server.address)
    assert await server.wait_connections(1, 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.2)
    assert server.connections_open == 1
    assert not await server.wait_closed(0.1)  # the client still holds its socket: a "leak"
    writer.close()
    assert await server.wait_closed(5)
    assert server.connections[0].client_closed
    assert not server.connections[0].server_closed


async def test_scripted_trickle_arrives_byte_by_byte(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(trickle(0.001))
    reader, writer = await asyncio.open_connection(*server.address)
    chunks: list[bytes] = []
    while not b"".join(chunks).endswith(b"\r\n"):
        chunks.append(await asyncio.wait_for(reader.read(100), 5))
    writer.close()
    assert len(chunks) > 10  # it did not arrive in one piece
    assert b"".join(chunks).startswith(b"220 mail.test")


async def test_scripted_trickle_is_not_finished_early(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(trickle(0.2))
    reader, writer = await asyncio.open_connection(*server.address)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.5)
    writer.close()


@pytest.mark.parametrize("at_banner", [False, True])
async def test_scripted_endless_multiline(scripted_server: ScriptedFactory, at_banner: bool) -> None:
    server = await scripted_server(endless_multiline(at_banner=at_banner))
    reader, writer = await asyncio.open_connection(*server.address)
    if not at_banner:
        await reader.readline()
        writer.write(b"EHLO probe.test\r\n")
    parser = ReplyParser()
    received = 0
    with pytest.raises(Exception, match="more than"):
        while received < 4 << 20:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            received += len(chunk)
            parser.feed(chunk)
    writer.close()
    assert await server.wait_closed(5)


async def test_scripted_megabyte_line(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(megabyte_line())
    reader, writer = await asyncio.open_connection(*server.address)
    data = b""
    while len(data) < (1 << 20) + 4:
        data += await asyncio.wait_for(reader.read(1 << 20), 5)
    assert b"\n" not in data
    writer.close()


async def test_scripted_close_after_ehlo(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(close_after_ehlo())
    reader, writer = await asyncio.open_connection(*server.address)
    await reader.readline()
    writer.write(b"EHLO probe.test\r\n")
    assert await _read_all(reader) == b""
    writer.close()
    assert server.connections[0].server_closed
    assert server.connections[0].lines == [b"EHLO probe.test\r\n"]


async def test_scripted_reset(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server([Send(BANNER_LINE), ExpectLine(), Reset()])
    reader, writer = await asyncio.open_connection(*server.address)
    await reader.readline()
    writer.write(b"EHLO probe.test\r\n")
    with pytest.raises(ConnectionResetError):
        await _read_all(reader)
    writer.close()


async def test_scripted_half_close_keeps_reading(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server([Send(BANNER_LINE), HalfClose(), ExpectLine(), Close()])
    reader, writer = await asyncio.open_connection(*server.address)
    assert await _read_all(reader) == BANNER_LINE  # then EOF
    writer.write(b"QUIT\r\n")
    assert await server.wait_closed(5)
    assert server.connections[0].lines == [b"QUIT\r\n"]
    writer.close()


async def test_scripted_starttls_upgrade(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(starttls_conversation(tls_ca.server_cert.server_context()))
    reader, writer = await asyncio.open_connection(*server.address)
    parser = ReplyParser()

    async def reply() -> Reply:
        while True:
            replies = parser.feed(await asyncio.wait_for(reader.readline(), 5))
            if replies:
                return replies[0]

    assert (await reply()).code == 220
    writer.write(b"EHLO probe.test\r\n")
    assert "STARTTLS" in (await reply()).lines
    writer.write(b"STARTTLS\r\n")
    assert (await reply()).code == 220
    await writer.start_tls(tls_ca.client_context(), server_hostname="mail.test")
    writer.write(b"EHLO probe.test\r\n")
    assert (await reply()).code == 250
    writer.write(b"QUIT\r\n")
    assert (await reply()).code == 221
    writer.close()
    assert await server.wait_closed(5)
    assert server.connections[0].tls
    assert server.connections[0].lines[-1] == b"QUIT\r\n"  # recorded after decryption


async def test_scripted_starttls_without_tls(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(starttls_no_tls())
    reader, writer = await asyncio.open_connection(*server.address)
    await reader.readline()
    writer.write(b"EHLO probe.test\r\n")
    for _ in range(3):
        await reader.readline()
    writer.write(b"STARTTLS\r\n")
    assert (await reader.readline()).startswith(b"220 ")
    with pytest.raises(ssl.SSLError):
        await asyncio.wait_for(writer.start_tls(tls_ca.client_context(), server_hostname="mail.test"), 5)
    writer.close()


async def test_scripted_server_side_tls_failure_is_recorded(scripted_server: ScriptedFactory) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no certificate: handshake fails
    server = await scripted_server([StartTLS(context)])
    _, writer = await asyncio.open_connection(*server.address)
    writer.write(b"\x16\x03\x01\x00\x05hello")
    assert await server.wait_closed(5)
    assert server.connections[0].error is not None
    writer.close()


async def test_scripted_per_connection_scripts_and_dual_stack(scripted_server: ScriptedFactory) -> None:
    server = await scripted_server(
        lambda n: [Send(b"220 first\r\n")] if n == 0 else [Send(b"554 second\r\n"), Close()],
        hosts=("127.0.0.1", "::1"),
    )
    first = await asyncio.open_connection("127.0.0.1", server.port)
    assert await first[0].readline() == b"220 first\r\n"
    second = await asyncio.open_connection("::1", server.port)
    assert await second[0].readline() == b"554 second\r\n"
    first[1].close()
    second[1].close()
    assert await server.wait_closed(5)
    assert len(server.connections) == 2


async def test_scripted_stop_cancels_sleeping_scripts() -> None:
    server = await ScriptedServer([Sleep(3600)]).start()
    reader, writer = await asyncio.open_connection(*server.address)
    await server.wait_connections(1, 5)
    await asyncio.wait_for(server.stop(), 5)
    assert await _read_all(reader) == b""
    writer.close()


# -- DNS -----------------------------------------------------------------------------

ZONE = {
    "example.test": {"MX": ["20 mx2.example.test.", "10 mx1.example.test."], "A": "127.0.0.1"},
    "mx1.example.test": {"A": "127.0.0.1", "AAAA": "::1"},
    "mx2.example.test": {"A": "127.0.0.2"},
    "nullmx.test": {"MX": "0 ."},
    "alias.example.test": {"CNAME": "mx1.example.test."},
    "many.test": {"A": [f"127.0.1.{i}" for i in range(1, 80)]},
}


async def test_dns_mx_and_address_records(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server(ZONE)
    resolver = server.resolver()
    mx = await resolver.resolve("example.test", "MX")
    assert sorted((r.preference, r.exchange.to_text()) for r in mx) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    assert [r.to_text() for r in await resolver.resolve("mx1.example.test", "AAAA")] == ["::1"]
    alias = await resolver.resolve("alias.example.test", "A")
    assert alias.canonical_name.to_text() == "mx1.example.test."
    assert [r.to_text() for r in alias] == ["127.0.0.1"]
    assert ("example.test.", "MX", "udp") in {(q.name, q.rdtype, q.transport) for q in server.queries}
    assert server.nameserver == f"127.0.0.1:{server.port}"
    assert not server.errors


async def test_dns_null_mx(dns_server: Callable[..., DnsServer]) -> None:
    (record,) = await dns_server(ZONE).resolver().resolve("nullmx.test", "MX")
    assert (record.preference, record.exchange.to_text()) == (0, ".")


async def test_dns_nxdomain_nodata_servfail_refused(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server(ZONE, servfail=["broken.test"])
    resolver = server.resolver(lifetime=1.0)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("nope.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("mx2.example.test", "MX")
    for name in ("broken.test", "example.org"):  # SERVFAIL; REFUSED (not our zone)
        with pytest.raises(dns.resolver.NoNameservers):
            await resolver.resolve(name, "A")
    query = dns.message.make_query("broken.test", "A")
    response = await dns.asyncquery.udp(query, "127.0.0.1", timeout=2, port=server.port)
    assert response.rcode() == dns.rcode.SERVFAIL


async def test_dns_delay_and_drop_make_resolvers_time_out(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server(
        ZONE | {"slow.test": {"A": "127.0.0.9"}}, delays={"slow.test": 0.8}, drop=["drop.test"]
    )
    resolver = server.resolver(lifetime=0.2)
    for name in ("slow.test", "drop.test"):
        with pytest.raises(dns.resolver.LifetimeTimeout):
            await resolver.resolve(name, "A")
    assert [r.to_text() for r in await server.resolver(lifetime=4).resolve("slow.test", "A")] == ["127.0.0.9"]


async def test_dns_tcp_on_the_same_port(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server(ZONE, truncate_udp=True)
    answer = await server.resolver().resolve("many.test", "A")
    assert len(answer) == 79
    assert [q.transport for q in server.queries] == ["udp", "tcp"]
    response = await dns.asyncquery.tcp(
        dns.message.make_query("example.test", "MX"), "127.0.0.1", timeout=2, port=server.port
    )
    assert len(response.answer[0]) == 2


async def test_dns_large_answer_is_truncated_over_udp(dns_server: Callable[..., DnsServer]) -> None:
    server = dns_server(ZONE)
    query = dns.message.make_query("many.test", "A", use_edns=False)
    response = await dns.asyncquery.udp(query, "127.0.0.1", timeout=2, port=server.port)
    assert response.flags & dns.flags.TC
    assert len(await server.resolver().resolve("many.test", "A")) == 79  # the resolver retries over TCP
