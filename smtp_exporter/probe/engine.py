"""One probe: resolve, connect, then the SMTP session (protocol/session.py) over one connection.

`Conversation.run` is the probe's task. It resolves the target, connects, and starts TLS when
the session asks; everything between is driven from `data_received` (probe/connection.py).
Whatever goes wrong ends as a failed `ProbeResult`, never as an exception: the server's
misbehaviour with the session's reasons, a failure on the exporter's own side (no file
descriptor left, an unexpected error) as `local_error`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import ssl
import time
from typing import NamedTuple

from smtp_exporter.config.schema import ModuleConfig
from smtp_exporter.model import (
    AddressInfo,
    FailureReason,
    MXInfo,
    Phase,
    ProbeResult,
    TLSInfo,
    Transaction,
    Transcript,
    round_to_ns,
)
from smtp_exporter.probe.connection import SMTPClientProtocol, perf_counter
from smtp_exporter.probe.errors import LOCAL_ERRNOS, LOCAL_ERROR, ProbeError
from smtp_exporter.probe.resolve import Address, DNSClient
from smtp_exporter.probe.tls import (
    CertificateReader,
    HandshakeState,
    received_state,
    session_info,
    watch_handshake,
)
from smtp_exporter.protocol import ClientSession, build_message
from smtp_exporter.protocol.exchange import CLOSING, TALKING, TLS
from smtp_exporter.targets import Target

log = logging.getLogger("smtp_exporter.probe")

QUIT_GRACE_SECONDS = 1.0  # how long a failed probe still waits for QUIT's reply
# How a failed connect reads to an operator; any other error means the address cannot be reached.
_CONNECT_ERRORS = {
    errno.ECONNREFUSED: FailureReason.CONNECT_REFUSED,  # nothing listens, or a firewall rejects
    errno.ECONNRESET: FailureReason.CONNECTION_CLOSED,  # it accepted, then dropped us at once
    errno.ECONNABORTED: FailureReason.CONNECTION_CLOSED,
    errno.EPIPE: FailureReason.CONNECTION_CLOSED,
    errno.ETIMEDOUT: FailureReason.TIMEOUT,
    # The exporter's own side: no other address would do better.
    **dict.fromkeys(LOCAL_ERRNOS, FailureReason.LOCAL_ERROR),
}


class Candidate(NamedTuple):
    address: Address
    mx: MXInfo | None


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
        mx: MXInfo | None = None,
        lookup_mx: bool = False,
        pre_resolve_seconds: float = 0.0,
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
        self.mx = mx
        self.lookup_mx = lookup_mx
        self.pre_resolve_seconds = pre_resolve_seconds
        self.server_name: str | None = None
        self.t0 = 0.0
        self.conn: SMTPClientProtocol | None = None
        self.address: AddressInfo | None = None
        self.tls: TLSInfo | None = None

    def _deadline_left(self) -> float:
        return self.timeout - (perf_counter() - self.t0)

    async def run(self) -> ProbeResult:
        start_timestamp = time.time()
        self.t0 = perf_counter()
        session = ClientSession(self.module, ehlo_name=self.ehlo_name, timeout=self.timeout)
        try:
            try:
                session.message = self._message(start_timestamp)
                async with asyncio.timeout(self.timeout):
                    await self._converse(session)
            except TimeoutError:
                session.deadline_reached(perf_counter())
            except Exception as exc:  # a bug or an exporter-side failure: a result all the same
                log.exception("probe of %s failed on the exporter's side", self.target_text)
                session.fail(perf_counter(), FailureReason.LOCAL_ERROR, f"{LOCAL_ERROR}: {_describe(exc)}")
            if session.status is CLOSING:
                await self._goodbye(session)
        finally:
            if self.conn is not None:
                self.conn.close(abort=session.failure is not None or self.tls is not None)
        ended = perf_counter()
        outcome = session.outcome(ended)
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
        )

    def _message(self, timestamp: float) -> bytes | None:
        module = self.module
        if module.transaction is not Transaction.MESSAGE:
            return None
        return build_message(
            mail_from=module.mail_from,
            rcpt_to=module.rcpt_to,
            subject=module.message.subject,
            body=module.message.body,
            headers=module.message.headers,
            domain=self.ehlo_name,
            timestamp=timestamp,
            unique=f"smtp-exporter.{secrets.token_hex(8)}",
        )

    async def _converse(self, session: ClientSession) -> None:
        candidates = await self._resolve(session)
        if candidates is None:
            return
        conn = await self._connect(session, candidates)
        if conn is None:
            return
        while True:
            status = session.status
            if status is TLS:
                await self._tls(session, conn)
            elif status is TALKING:
                await conn.wait()
            else:
                return

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
        if target.ip is not None:
            session.connecting()
            return [Candidate(Address(target.host, target.ip.version), None)]
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
        session.resolved(started, perf_counter())
        return candidates

    async def _candidates(self, session: ClientSession) -> list[Candidate]:
        target = self.target
        ip_protocol = self.module.ip_protocol
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

    async def _connect(
        self, session: ClientSession, candidates: list[Candidate]
    ) -> SMTPClientProtocol | None:
        loop = asyncio.get_running_loop()
        port = self.target.port
        started = perf_counter()
        reason, message = FailureReason.NETWORK_UNREACHABLE, "no address to connect to"
        for address, mx in candidates:
            via = f" (MX {mx.host})" if mx is not None else ""
            session.note(perf_counter(), f"connecting to {address.ip} port {port}{via}")
            protocol = SMTPClientProtocol(session, started)
            try:
                await loop.create_connection(lambda p=protocol: p, address.ip, port)  # type: ignore[misc]
            except OSError as exc:
                reason = _CONNECT_ERRORS.get(exc.errno or 0, FailureReason.NETWORK_UNREACHABLE)
                detail = os.strerror(exc.errno) if exc.errno else str(exc)
                if reason is FailureReason.LOCAL_ERROR:
                    message = f"{LOCAL_ERROR}: {detail} (connecting to {address.ip} port {port}{via})"
                    break
                message = f"{address.ip} port {port}{via}: {detail}"
                session.note(perf_counter(), message)
                continue
            self.conn = protocol
            self.address = AddressInfo(address.ip, port, address.family)
            self.mx = mx
            self.server_name = self.module.tls_config.server_name or (mx.host if mx else self.target.host)
            return protocol
        session.fail(perf_counter(), reason, message, Phase.CONNECT)
        return None

    async def _tls(self, session: ClientSession, conn: SMTPClientProtocol) -> None:
        assert self.tls_context is not None
        if conn.lost is not None:
            session.fail(perf_counter(), FailureReason.CONNECTION_CLOSED, "connection closed by the server")
            return
        started = perf_counter()
        verifying = self.tls_context.verify_mode != ssl.CERT_NONE
        try:
            with watch_handshake() as handshake:
                await conn.start_tls(self.tls_context, self.server_name, self._deadline_left())
        except ssl.SSLCertVerificationError as exc:
            state: HandshakeState | None = getattr(exc, "peer_state", None)
            message = exc.verify_message or str(exc)
            self.tls = self.certificates.tls_info(
                leaf_der=state.leaf_der if state else None,
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
            broken = received_state(handshake[0]) if handshake else None
            if broken is not None and broken.leaf_der is not None:
                # The server broke off after its Certificate: report what it presented.
                self.tls = self.certificates.tls_info(
                    leaf_der=broken.leaf_der,
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
