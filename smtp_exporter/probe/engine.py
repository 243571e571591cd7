"""One probe: resolve, connect, then the SMTP session (protocol/session.py) over one connection.

`Conversation.run` is the probe's task. It resolves the target, connects, and starts TLS when
the session asks; everything between is driven from `data_received` (probe/connection.py).
Whatever goes wrong ends as a failed `ProbeResult`, never as an exception: the server's
misbehaviour with the session's reasons, a failure on the exporter's own side (no file
descriptor left, an unexpected error) as `local_error`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import time

from smtp_exporter.config.schema import OAUTH_MECHANISMS, IPProtocol, ModuleConfig, MXFailover
from smtp_exporter.credentials import SecretError, bearer_token
from smtp_exporter.model import (
    AddressInfo,
    FailureReason,
    MXInfo,
    Phase,
    ProbeResult,
    TLSInfo,
    Transaction,
    Transcript,
    fell_back,
    round_to_ns,
)
from smtp_exporter.probe.attempts import Attempts, Candidate
from smtp_exporter.probe.connection import SMTPClientProtocol, perf_counter
from smtp_exporter.probe.errors import LOCAL_ERROR, ProbeError
from smtp_exporter.probe.resolve import Address, DNSClient
from smtp_exporter.probe.tls import (
    CertificateReader,
    HandshakeState,
    HandshakeWatch,
    Watching,
    received_state,
    session_info,
)
from smtp_exporter.protocol import ClientSession, build_message
from smtp_exporter.protocol.envelope import Sender
from smtp_exporter.protocol.exchange import CLOSING, TALKING, TLS
from smtp_exporter.protocol.message import Token
from smtp_exporter.targets import Target

log = logging.getLogger("smtp_exporter.probe")

QUIT_GRACE_SECONDS = 1.0  # how long a failed probe still waits for QUIT's reply


class Conversation:
    """The state of one probe. Built per probe by `Prober`; `run()` once."""

    def __init__(
        self,
        *,
        target: Target,
        target_text: str,
        module_name: str,
        module: ModuleConfig,
        timeout: float,
        dns: DNSClient,
        tls_context: ssl.SSLContext | None,
        certificates: CertificateReader,
        ehlo_name: str,
        sender: Sender,
        mx: MXInfo | None = None,
        lookup_mx: bool = False,
        pre_resolve_seconds: float = 0.0,
        family: int | None = None,
    ) -> None:
        self.target = target
        self.target_text = target_text
        self.module_name = module_name
        self.module = module
        self.timeout = timeout
        self.dns = dns
        self.tls_context = tls_context
        self.certificates = certificates
        self.ehlo_name = ehlo_name
        self.sender = sender
        self.mx = mx
        self.lookup_mx = lookup_mx
        self.pre_resolve_seconds = pre_resolve_seconds
        # The one family probed (4 or 6): each of an `ip_protocol: both` module's two probes.
        self.family = family
        self.server_name: str | None = None
        self.t0 = 0.0
        self.conn: SMTPClientProtocol | None = None
        self.address: AddressInfo | None = None
        self.tls: TLSInfo | None = None
        self.handshake = HandshakeWatch()
        self.attempts: Attempts | None = None
        # A fresh session for each connection; they share one transcript (see _new_session).
        self.session = ClientSession(module, ehlo_name=ehlo_name, timeout=timeout, sender=sender)
        self._resolve_times: tuple[float, float] | None = None
        # What names the probe message (transaction: message), for the delivery check to find.
        self.token: Token | None = None
        self.message_id = ""

    def _deadline_left(self) -> float:
        return self.timeout - (perf_counter() - self.t0)

    async def run(self) -> ProbeResult:
        start_timestamp = time.time()
        self.t0 = perf_counter()
        self.session.message = message = self._message(start_timestamp)
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    with Watching(self.handshake):  # for every connection (see there)
                        if self._read_token():
                            await self._converse(message)
            except TimeoutError:
                if self.attempts is not None:
                    self.attempts.abandon(perf_counter())
                self.session.deadline_reached(perf_counter())
            except Exception as exc:  # a bug or an exporter-side failure: a result all the same
                log.exception("probe of %s failed on the exporter's side", self.target_text)
                self.session.fail(
                    perf_counter(), FailureReason.LOCAL_ERROR, f"{LOCAL_ERROR}: {_describe(exc)}"
                )
            if self.session.status is CLOSING:
                await self._goodbye(self.session)
        finally:
            if self.conn is not None:
                self.conn.close(abort=self.session.failure is not None or self.tls is not None)
        ended = perf_counter()
        outcome = self.session.outcome(ended)
        attempts = () if self.attempts is None else self.attempts.report(ended, report_mx=self.module.mx)
        return ProbeResult(
            target=self.target_text,
            module=self.module_name,
            success=outcome.failure is None,
            start_timestamp=start_timestamp,
            duration_seconds=round_to_ns(ended - self.t0),
            phases=outcome.phases,
            failure=outcome.failure,
            tls=self.tls,
            server=outcome.server,
            address=self.address,
            mx=self.mx,
            transcript=Transcript(outcome.events, self.t0),
            attempts=attempts,
            fallback=fell_back(outcome.failure is None, attempts),
            pipelined=outcome.pipelined,
        )

    def _read_token(self) -> bool:
        """An OAuth mechanism's token, read for this probe (an external agent rewrites it) before
        connecting; False when it cannot be read: the probe fails on the exporter's side."""
        auth = self.module.auth
        if auth is None or auth.mechanism not in OAUTH_MECHANISMS:
            return True
        try:
            self.session.token = bearer_token(auth)
        except SecretError as exc:
            message = f"{LOCAL_ERROR}: OAuth token: {exc}"
            self.session.fail(perf_counter(), FailureReason.LOCAL_ERROR, message, Phase.AUTH)
            return False
        return True

    def _message(self, timestamp: float) -> bytes | None:
        module = self.module
        if module.transaction is not Transaction.MESSAGE:
            return None
        token = self.token = Token(self.module_name, int(timestamp), f"smtp-exporter.{secrets.token_hex(8)}")
        self.message_id = token.message_id(self.ehlo_name)
        return build_message(
            mail_from=module.mail_from,
            rcpt_to=module.rcpt_to,
            subject=module.message.subject,
            body=module.message.body,
            headers=module.message.headers,
            domain=self.ehlo_name,
            token=token,
        )

    async def _converse(self, message: bytes | None) -> None:
        session = self.session
        candidates = await self._resolve(session)
        if candidates is None:
            return
        module = self.module
        family = self.family or module.source_family
        if family is not None:
            # A socket bound to an address of one family cannot reach the other's addresses; one
            # probe of `ip_protocol: both` must not report the other family's (an IP literal).
            candidates = [c for c in candidates if c.address.family == family]
            if not candidates:
                text = (
                    f"no IPv{family} address to connect to from source_ip_address {module.source_ip_address}"
                    if self.family is None
                    else f"no IPv{family} address to connect to (ip_protocol: both probes each family)"
                )
                session.fail(perf_counter(), FailureReason.NETWORK_UNREACHABLE, text, Phase.CONNECT)
                return
        attempts = self.attempts = Attempts(
            candidates,
            self.target.port,
            connect_timeout=module.connect_timeout_for(self.timeout),
            max_attempts=module.max_attempts,
            failover_on_connect=MXFailover.CONNECT in module.mx_failover_on,
            source=module.source_ip_address,
            stagger=module.happy_eyeballs_delay
            if module.ip_protocol in (IPProtocol.AUTO, IPProtocol.PREFER_IP4)
            else None,
            preferred_family=4 if module.ip_protocol is IPProtocol.PREFER_IP4 else 6,
        )
        while True:
            conn = await self._connect(self.session, attempts)
            if conn is None:
                return
            await self._talk(self.session, conn)
            if not self._fails_over(self.session):
                return
            record = attempts.records[-1]
            failure = self.session.failure
            assert failure is not None
            record.failed(perf_counter(), failure.phase, failure.reason, failure.message)
            if not attempts.next_host(record.candidate.mx):
                return
            self.session.note(perf_counter(), "moving on to the next MX host")
            # QUIT is out (the session sent it on failing): closed without waiting for its reply.
            conn.close(abort=False)
            self.conn = None
            self.address = None
            self.mx = None
            self.session = self._new_session(message)

    async def _talk(self, session: ClientSession, conn: SMTPClientProtocol) -> None:
        while True:
            status = session.status
            if status is TLS:
                await self._tls(session, conn)
            elif status is TALKING:
                await conn.wait()
            else:
                return

    def _fails_over(self, session: ClientSession) -> bool:
        """Whether the session's failure moves the probe on to the next MX host: a 4xx/5xx
        greeting or a failed EHLO (HELO), as `mx_failover_on` allows, and only for a mail domain."""
        failure = session.failure
        if failure is None or not self.lookup_mx:
            return False
        on = self.module.mx_failover_on
        if failure.phase is Phase.BANNER:
            return MXFailover.GREETING in on and failure.reason in (
                FailureReason.REPLY_TEMPORARY,
                FailureReason.REPLY_PERMANENT,
            )
        if failure.phase in (Phase.EHLO, Phase.HELO):
            return MXFailover.EHLO in on and failure.reason is not FailureReason.TIMEOUT
        return False

    def _new_session(self, message: bytes | None) -> ClientSession:
        """A session for the next connection: the resolve phase it shares with the first, and the
        same transcript list, so the result's transcript tells every attempt."""
        previous = self.session
        session = ClientSession(
            self.module, ehlo_name=self.ehlo_name, timeout=self.timeout, message=message, sender=self.sender
        )
        session.token = previous.token
        session.events = previous.events
        assert self._resolve_times is not None
        session.resolved(*self._resolve_times)
        return session

    async def _goodbye(self, session: ClientSession) -> None:
        """After a failure the session has said QUIT: its reply is waited for briefly, within the
        deadline, and never changes the result."""
        assert self.conn is not None
        grace = min(QUIT_GRACE_SECONDS, self._deadline_left())
        if grace > 0:
            try:
                async with asyncio.timeout(grace):
                    await self.conn.wait_done()
            except TimeoutError:
                pass
        session.deadline_reached(perf_counter())

    async def _resolve(self, session: ClientSession) -> list[Candidate] | None:
        target = self.target
        if target.family is not None:
            session.connecting()
            self._resolve_times = (self.t0, self.t0)
            return [Candidate(Address(target.host, target.family), None)]
        started = perf_counter() - self.pre_resolve_seconds
        try:
            candidates = await self._candidates(session)
        except ProbeError as exc:
            session.fail(perf_counter(), exc.reason, exc.message, exc.phase)
            return None
        except OSError as exc:  # a socket the resolver could not open: no descriptor left
            session.fail(
                perf_counter(),
                FailureReason.LOCAL_ERROR,
                f"{LOCAL_ERROR}: DNS lookup of {target.host}: {_describe(exc)}",
            )
            return None
        self._resolve_times = (started, perf_counter())
        session.resolved(*self._resolve_times)
        return candidates

    async def _candidates(self, session: ClientSession) -> list[Candidate]:
        target = self.target
        ip_protocol = self.module.ip_protocol
        family = self.family or self.module.source_family
        if family is not None:  # only the source's family is looked up: the other is unreachable
            ip_protocol = IPProtocol.IP4 if family == 4 else IPProtocol.IP6
        if not self.lookup_mx:
            addresses = await self.dns.addresses(target.host, ip_protocol)
            return [Candidate(address, self.mx) for address in addresses]
        hosts = await self.dns.mx_hosts(target.host)
        found = await asyncio.gather(
            *(self.dns.addresses(mx.host, ip_protocol) for mx in hosts), return_exceptions=True
        )
        candidates = []
        for mx, answer in zip(hosts, found, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, ProbeError):
                    raise answer
                session.note(perf_counter(), f"MX {mx.host}: {answer.message}")
                continue
            candidates += [Candidate(address, mx) for address in answer]
        if not candidates:
            first = found[0]
            assert isinstance(first, ProbeError)
            raise first
        return candidates

    async def _connect(self, session: ClientSession, attempts: Attempts) -> SMTPClientProtocol | None:
        loop = asyncio.get_running_loop()
        started = perf_counter()
        while True:
            protocol = SMTPClientProtocol(session, started)
            connected = await attempts.connect(self._deadline_left, session.note, protocol)
            if connected is None:
                last = attempts.last_failure()
                if last is None:
                    session.fail(
                        perf_counter(), FailureReason.TIMEOUT, "no time left to connect", Phase.CONNECT
                    )
                else:
                    assert last.reason is not None and last.phase is not None
                    session.fail(perf_counter(), last.reason, last.message, last.phase)
                return None
            made, record = connected
            if isinstance(made, socket.socket):  # a raced or source-bound attempt's socket
                try:
                    await loop.create_connection(lambda p=protocol: p, sock=made)  # type: ignore[misc]
                except OSError as exc:  # connected, and lost at once
                    made.close()
                    record.failed(
                        perf_counter(),
                        Phase.CONNECT,
                        FailureReason.CONNECTION_CLOSED,
                        f"{attempts.describe(record.candidate)}: {_describe(exc)}",
                    )
                    continue
            address, mx = record.candidate
            self.conn = protocol
            self.address = AddressInfo(address.ip, self.target.port, address.family)
            self.mx = mx
            self.server_name = self.module.tls_config.server_name or (mx.host if mx else self.target.host)
            return protocol

    async def _tls(self, session: ClientSession, conn: SMTPClientProtocol) -> None:
        assert self.tls_context is not None
        if conn.lost is not None:
            session.fail(perf_counter(), FailureReason.CONNECTION_CLOSED, "connection closed by the server")
            return
        started = perf_counter()
        verifying = self.tls_context.verify_mode != ssl.CERT_NONE
        try:
            self.handshake.arm(conn.transport)
            await conn.start_tls(self.tls_context, self.server_name, self._deadline_left())
        except ssl.SSLCertVerificationError as exc:
            state: HandshakeState | None = getattr(exc, "peer_state", None)
            message = exc.verify_message or str(exc)
            self.tls = self.certificates.tls_info(
                chain=state.chain if state else (),
                version=state.version if state else None,
                cipher=state.cipher if state else None,
                verified=False,
                verify_error=message,
            )
            session.note(perf_counter(), f"TLS certificate verification failed: {message}")
            session.fail(perf_counter(), FailureReason.TLS_CERT_INVALID, message)
            return
        except (ssl.SSLError, ConnectionError) as exc:
            message = f"TLS handshake failed: {exc or type(exc).__name__}"
            sslobj = self.handshake.sslobj
            broken = received_state(sslobj) if sslobj is not None else None
            if broken is not None and broken.chain:
                # The server broke off after its Certificate: report what it presented.
                self.tls = self.certificates.tls_info(
                    chain=broken.chain,
                    version=broken.version,
                    cipher=broken.cipher,
                    verified=False,
                    verify_error=None,
                )
            session.note(perf_counter(), message)
            session.fail(perf_counter(), FailureReason.TLS_HANDSHAKE_FAILED, message)
            return
        except TimeoutError:
            session.fail(perf_counter(), FailureReason.TIMEOUT, "TLS handshake did not complete in time")
            return
        ended = perf_counter()
        sslobj = conn.ssl_object
        assert sslobj is not None
        self.tls = session_info(self.certificates, sslobj, verified=verifying)
        session.tls_established(started, ended)
        session.note(
            perf_counter(),
            f"TLS {self.tls.version} {self.tls.cipher}, certificate subject {self.tls.subject}",
        )
        conn.handshake_done()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def this_host_fqdn() -> str:
    name = socket.getfqdn()
    return name if name and name != "localhost" else "localhost.localdomain"
