"""Real aiosmtpd SMTP servers on 127.0.0.1, port 0, each in its own thread and event loop.

One class, `AiosmtpdServer`, covers every variant the tests need:

    with AiosmtpdServer() as server:                                   # plain
    with AiosmtpdServer(starttls=ca.server_cert) as server:            # STARTTLS offered
    with AiosmtpdServer(implicit_tls=ca.server_cert) as server:        # SMTPS
    with AiosmtpdServer(auth_users={"probe": "s3cret"}, ...) as s:     # AUTH PLAIN/LOGIN/CRAM-MD5
    with AiosmtpdServer(oauth_tokens={"u@x.test": "ya29.t"}, ...) as s:  # AUTH XOAUTH2/OAUTHBEARER
    with AiosmtpdServer(faults=[Fault("rcpt", 550, "5.1.1")]) as s:    # 550 5.1.1 at RCPT

`async with` works too (start and stop take a few milliseconds, so they run inline).
The server runs in a thread of its own, so a probe running on the test's event loop talks
to it over a real socket exactly as it would to a remote MTA. `server.port` is the port the
kernel chose. Everything the client did is recorded: `messages` (envelope + content),
`connections` (raw bytes the client sent, TLS or not, closed or not) and `auth_attempts`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers.lifecycle import LoopThread, StartStop, cancel_other_tasks
from tests.servers.tls import ServerCert

# Where a fault can be injected; names match smtp_exporter.model.Phase.
# "ehlo" is an EHLO before STARTTLS (or inside implicit TLS), "ehlo_tls" one after STARTTLS;
# "data" is the reply to the DATA command (354), "message" the reply after the final dot.
FAULT_PHASES = frozenset(
    {"banner", "ehlo", "ehlo_tls", "helo", "starttls", "auth"}
    | {"mail", "rcpt", "data", "message", "rset", "quit"}
)
_PHASE_VERBS = {
    "ehlo": "EHLO",
    "ehlo_tls": "EHLO",
    "helo": "HELO",
    "starttls": "STARTTLS",
    "auth": "AUTH",
    "mail": "MAIL",
    "rcpt": "RCPT",
    "data": "DATA",
    "rset": "RSET",
    "quit": "QUIT",
}
# The credentials `auth_server` (tests/conftest.py) accepts.
TEST_USERNAME = "probe"
TEST_PASSWORD = "correct horse battery staple"
MAX_RECORDED_BYTES = 1 << 20  # per connection: enough for any probe, bounded for hostile tests
CRAM_MD5_CHALLENGE = b"<1896.697170952@mail.test>"
OAUTH_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
# What a refused token gets: Google's XOAUTH2 error challenge, RFC 7628 3.2.2's for OAUTHBEARER.
OAUTH_ERROR_CHALLENGES = {
    "XOAUTH2": {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"},
    "OAUTHBEARER": {"status": "invalid_token", "scope": "https://mail.test/smtp"},
}


@dataclass(frozen=True, slots=True)
class Fault:
    """Answer `code [enhanced] text` at `phase` instead of the normal reply.

    With `close=True` the server closes the connection right after the reply (like a
    server answering 421). A fault at "quit" always closes, as QUIT does.
    """

    phase: str
    code: int = 451
    enhanced: str | None = "4.3.0"
    text: str = "Injected fault"
    close: bool = False

    def __post_init__(self) -> None:
        if self.phase not in FAULT_PHASES:
            raise ValueError(f"unknown fault phase {self.phase!r}; one of {sorted(FAULT_PHASES)}")
        if not 200 <= self.code <= 599:
            raise ValueError(f"fault code {self.code} out of range")

    @property
    def line(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}" if self.enhanced else f"{self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message after the final dot, as the server saw it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes  # after the server removed dot-stuffing, CRLF line ends kept
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    helo: str | None
    tls: bool
    login: str | None  # the authenticated username, if any
    accepted: bool  # False when a "message" fault rejected it


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    mechanism: str
    login: str
    password: str  # for CRAM-MD5, the hex digest the client sent; for OAuth, the token
    success: bool
    challenge_answer: bytes | None = None  # OAuth: the decoded answer to the error challenge


@dataclass(slots=True)
class ConnectionRecord:
    """One client connection. `received` is every byte the client sent (after TLS decryption)."""

    peer: tuple[Any, ...]
    received: bytearray = field(default_factory=bytearray)
    tls: bool = False  # STARTTLS completed (implicit TLS connections are TLS from the start)
    closed: bool = False


class _Handler:
    """aiosmtpd handler hooks: records messages, filters EHLO, answers "message" faults."""

    def __init__(self, owner: AiosmtpdServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        lines = [r[4:] for r in responses]
        if not self.owner.auth_users and not self.owner.oauth_tokens:
            lines = [line for line in lines if not line.startswith("AUTH")]
        lines[1:1] = self.owner.extra_extensions
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self.owner.faults.get("message")
        content = envelope.original_content or b""
        self.owner._record_message(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content if isinstance(content, bytes) else content.encode(),
                mail_options=tuple(envelope.mail_options),
                rcpt_options=tuple(envelope.rcpt_options),
                helo=session.host_name,
                tls=session.ssl is not None or self.owner.implicit_tls is not None,
                login=_login(session),
                accepted=fault is None,
            )
        )
        if fault is None:
            return "250 2.0.0 OK queued"
        if fault.close and server.transport is not None:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return fault.line

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        """CRAM-MD5 (RFC 2195), which aiosmtpd does not implement itself."""
        answer = await server.challenge_auth(CRAM_MD5_CHALLENGE)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=True)
        login, _, digest = answer.decode("utf-8", "replace").rpartition(" ")
        secret = self.owner.auth_users.get(login)
        expected = hmac.new(secret.encode(), CRAM_MD5_CHALLENGE, hashlib.md5).hexdigest() if secret else None
        ok = expected is not None and hmac.compare_digest(expected, digest)
        self.owner._record_auth(AuthAttempt("CRAM-MD5", login, digest, ok))
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login.encode(), b""))

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth(server, args, "OAUTHBEARER")

    async def _oauth(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        """XOAUTH2 and OAUTHBEARER (RFC 7628), which aiosmtpd does not implement: the initial
        response checked against `oauth_tokens`; a refused token gets the error challenge, and
        whatever answers it the 535 (RFC 7628 3.2.3)."""
        try:
            decoded = base64.b64decode(args[1] if len(args) > 1 else "", validate=True)
        except binascii.Error:
            return AuthResult(success=False, handled=False, message="501 5.5.2 Can't decode base64")
        head, _, rest = decoded.partition(b"\x01")
        if mechanism == "XOAUTH2":
            login = head.removeprefix(b"user=")
        else:  # the GS2 header "n,a=<saslname>,"
            login = head.split(b",")[1].removeprefix(b"a=").replace(b"=2C", b",").replace(b"=3D", b"=")
        pairs = dict(pair.split(b"=", 1) for pair in rest.split(b"\x01") if b"=" in pair)
        token = _text(pairs.get(b"auth", b"").removeprefix(b"Bearer "))
        expected = self.owner.oauth_tokens.get(_text(login))
        ok = rest.endswith(b"\x01\x01") and expected is not None and hmac.compare_digest(expected, token)
        if ok:
            self.owner._record_auth(AuthAttempt(mechanism, _text(login), token, True))
            return AuthResult(success=True, handled=False, auth_data=LoginPassword(login, b""))
        challenge = json.dumps(OAUTH_ERROR_CHALLENGES[mechanism]).encode()
        answer = await server.challenge_auth(challenge)
        recorded = answer if isinstance(answer, bytes) else None
        self.owner._record_auth(AuthAttempt(mechanism, _text(login), token, False, recorded))
        # "*" (MISSING): aiosmtpd has answered 501 already.
        return AuthResult(success=False, handled=answer is MISSING)


def _login(session: Session) -> str | None:
    data = session.auth_data
    return _text(data.login) if session.authenticated and isinstance(data, LoginPassword) else None


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, plus recording and fault injection."""

    def __init__(self, handler: _Handler, owner: AiosmtpdServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.record: ConnectionRecord | None = None
        self._greeted = False
        for phase, fault in owner.faults.items():
            verb = _PHASE_VERBS.get(phase)
            if verb is not None:
                self._smtp_methods[verb] = self._faulty(phase, fault, self._smtp_methods[verb])

    def _faulty(
        self, phase: str, fault: Fault, normal: Callable[[str], Awaitable[None]]
    ) -> Callable[[str], Awaitable[None]]:
        async def method(arg: str) -> None:
            tls_done = self._tls_protocol is not None
            if (phase == "ehlo" and tls_done) or (phase == "ehlo_tls" and not tls_done):
                await normal(arg)
                return
            await self.push(fault.line)
            if (fault.close or phase == "quit") and self.transport is not None:
                self.transport.close()

        return method

    async def push(self, status: AnyStr) -> None:
        if not self._greeted:
            self._greeted = True
            fault = self.owner.faults.get("banner")
            if fault is not None:
                await super().push(fault.line)
                if fault.close and self.transport is not None:
                    self.transport.close()
                return
        await super().push(status)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.record is None:
            self.record = self.owner._new_connection(transport.get_extra_info("peername"))
        else:  # called again by the TLS layer once STARTTLS completed
            self.record.tls = True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.record is not None:
            room = MAX_RECORDED_BYTES - len(self.record.received)
            if room > 0:
                self.record.received += data[:room]
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        if self.record is not None:
            self.owner._connection_closed(self.record)
        super().connection_lost(error)


class AiosmtpdServer(StartStop):
    """An aiosmtpd server on 127.0.0.1 (or `host`), port 0, in a thread of its own.

    Keyword options:
      starttls: a certificate to offer STARTTLS with (see tests.servers.tls.TestCA).
      require_starttls: refuse commands other than EHLO/STARTTLS/QUIT before TLS (530).
      implicit_tls: a certificate for SMTPS (TLS right after connect). Exclusive with starttls.
      auth_users: username -> password; offers AUTH PLAIN, LOGIN and CRAM-MD5.
      oauth_tokens: username -> bearer token; offers AUTH XOAUTH2 and OAUTHBEARER too (a dict
        the test may change between probes: the provider's token rotation).
      auth_require_tls: offer AUTH only inside TLS (default True, as real MTAs do).
      auth_required: refuse MAIL before AUTH (530).
      faults: `Fault`s to inject, at most one per phase.
      hostname: the name in the banner and in the EHLO reply.
      extra_extensions: more EHLO keywords to offer, e.g. ("X-TEST", "DSN").
      data_size_limit: the SIZE offered (and enforced), 0 for none.
      smtputf8: offer SMTPUTF8 (and accept UTF-8 addresses); False: strict ASCII, as before RFC 6531.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        hostname: str = "mail.test",
        starttls: ServerCert | None = None,
        require_starttls: bool = False,
        implicit_tls: ServerCert | None = None,
        auth_users: Mapping[str, str] | None = None,
        oauth_tokens: dict[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_required: bool = False,
        faults: Iterable[Fault] = (),
        extra_extensions: Iterable[str] = (),
        data_size_limit: int = 10 * 1024 * 1024,
        smtputf8: bool = True,
    ) -> None:
        if starttls is not None and implicit_tls is not None:
            raise ValueError("starttls and implicit_tls are exclusive")
        self.host = host
        self.hostname = hostname
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.auth_users = dict(auth_users or {})
        self.oauth_tokens = oauth_tokens if oauth_tokens is not None else {}
        self.faults: dict[str, Fault] = {}
        for fault in faults:
            if fault.phase in self.faults:
                raise ValueError(f"two faults for phase {fault.phase!r}")
            self.faults[fault.phase] = fault
        self.extra_extensions = list(extra_extensions)
        self._smtp_kwargs: dict[str, Any] = {
            "hostname": hostname,
            "ident": "ESMTP aiosmtpd test server",
            "data_size_limit": data_size_limit,
            "tls_context": starttls.server_context() if starttls else None,
            "require_starttls": require_starttls,
            # aiosmtpd cannot tell that an implicit-TLS connection is encrypted.
            "auth_require_tls": auth_require_tls and implicit_tls is None,
            "auth_required": auth_required,
            "authenticator": self._authenticate,
            "auth_exclude_mechanism": () if self.oauth_tokens else OAUTH_MECHANISMS,
            "enable_SMTPUTF8": smtputf8,
            "timeout": 30,
        }
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[ReceivedMessage] = []
        self._connections: list[ConnectionRecord] = []
        self._auth_attempts: list[AuthAttempt] = []
        self._protocols: set[_RecordingSMTP] = set()
        self._runner = LoopThread("aiosmtpd", self._listen, self._close)
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> AiosmtpdServer:
        self._runner.start()
        return self

    def stop(self) -> None:
        """Stop listening, abort open connections, end the thread. Idempotent."""
        self._runner.stop()

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.get_running_loop().create_server(
            self._protocol,
            self.host,
            0,
            ssl=self.implicit_tls.server_context() if self.implicit_tls else None,
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for protocol in list(self._protocols):
            if isinstance(protocol.transport, asyncio.Transport):
                protocol.transport.abort()
        await cancel_other_tasks()
        await server.wait_closed()

    # -- what the client did ----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def target(self) -> str:
        """`host:port`, the form a probe target takes."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> list[ConnectionRecord]:
        with self._lock:
            return list(self._connections)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._lock:
            return list(self._auth_attempts)

    @property
    def connections_open(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections if not c.closed)

    def wait_closed_blocking(self, timeout: float = 5.0) -> bool:
        """Block until every connection so far is closed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(not c.closed for c in self._connections):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    async def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait (without blocking the caller's loop) until every connection is closed."""
        return await asyncio.to_thread(self.wait_closed_blocking, timeout)

    def wait_messages_blocking(self, count: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; returns them all (maybe fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return list(self._messages)

    async def wait_messages(self, count: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        return await asyncio.to_thread(self.wait_messages_blocking, count, timeout)

    # -- called from the server thread ------------------------------------------------

    def _protocol(self) -> _RecordingSMTP:
        protocol = _RecordingSMTP(_Handler(self), self, loop=self._runner.loop, **self._smtp_kwargs)
        self._protocols.add(protocol)
        return protocol

    def _new_connection(self, peer: tuple[Any, ...]) -> ConnectionRecord:
        record = ConnectionRecord(peer=tuple(peer) if peer else ())
        with self._changed:
            self._connections.append(record)
            self._changed.notify_all()
        return record

    def _connection_closed(self, record: ConnectionRecord) -> None:
        with self._changed:
            record.closed = True
            self._changed.notify_all()

    def _record_message(self, message: ReceivedMessage) -> None:
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    def _record_auth(self, attempt: AuthAttempt) -> None:
        with self._changed:
            self._auth_attempts.append(attempt)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = _text(data.login), _text(data.password)
        ok = login in self.auth_users and hmac.compare_digest(self.auth_users[login], password)
        self._record_auth(AuthAttempt(mechanism, login, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=data)
