"""One SMTP conversation against one server, measured phase by phase."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
import secrets
import socket
import ssl
import sys
import time
from typing import NamedTuple

from smtp_exporter.config.schema import AuthConfig, AuthMechanism, ModuleConfig, StartTLS
from smtp_exporter.model import (
    AddressInfo,
    Failure,
    FailureReason,
    MXInfo,
    Phase,
    PhaseResult,
    ProbeResult,
    ServerInfo,
    TLSInfo,
    Transaction,
    Transcript,
    TranscriptEvent,
    round_to_ns,
)
from smtp_exporter.probe.connection import Script, SMTPClientProtocol, Step, perf_counter
from smtp_exporter.probe.errors import ProbeError, ProbeTimeoutError, ReplyError
from smtp_exporter.probe.resolve import Address, DNSClient
from smtp_exporter.probe.tls import CertificateReader, HandshakeState, session_info
from smtp_exporter.protocol import (
    CommandError,
    Reply,
    ReplyCode,
    auth_cram_md5_response,
    auth_login_step,
    auth_plain_initial,
    build_message,
    encode_command,
    parse_ehlo,
)
from smtp_exporter.targets import Target

QUIT_GRACE_SECONDS = 1.0  # how long a failed probe still waits for QUIT's reply
MAX_TRANSCRIPT_EVENTS = 200
REDACTED = "<redacted>"
# How a failed connect reads to an operator; any other error means the address cannot be reached.
_CONNECT_ERRORS = {
    errno.ECONNREFUSED: FailureReason.CONNECT_REFUSED,  # nothing listens, or a firewall rejects
    errno.ECONNRESET: FailureReason.CONNECTION_CLOSED,  # it accepted, then dropped us at once
    errno.ECONNABORTED: FailureReason.CONNECTION_CLOSED,
    errno.EPIPE: FailureReason.CONNECTION_CLOSED,
    errno.ETIMEDOUT: FailureReason.TIMEOUT,
}

_OK_CODES = {
    Phase.BANNER: (ReplyCode.SERVICE_READY,),
    Phase.EHLO: (ReplyCode.OK,),
    Phase.HELO: (ReplyCode.OK,),
    Phase.EHLO_TLS: (ReplyCode.OK,),
    Phase.STARTTLS: (ReplyCode.SERVICE_READY,),
    Phase.MAIL: (ReplyCode.OK,),
    Phase.RCPT: (ReplyCode.OK, ReplyCode.USER_NOT_LOCAL),
    Phase.DATA: (ReplyCode.START_MAIL_INPUT,),
    Phase.MESSAGE: (ReplyCode.OK,),
    Phase.RSET: (ReplyCode.OK,),
    Phase.QUIT: (ReplyCode.CLOSING,),
}


# A module's command lines are the same at every probe: encoded once, and then shared by the
# transcripts the scheduled targets keep. (parse_ehlo remembers the replies it read itself.)
_command_line = functools.lru_cache(maxsize=1024)(encode_command)


def _step(phase: Phase, line: bytes, *, shown: str | None = None) -> Step:
    """A script step that goes on after the replies `_command` accepts for `phase`."""
    return Step(phase, line, _OK_CODES[phase], shown)


class _Refusal(NamedTuple):
    """A reply with a code its script step did not expect."""

    phase: Phase
    reply: Reply


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

        self.phase = Phase.RESOLVE
        self.phases: list[PhaseResult] = []
        self.events: list[TranscriptEvent] = []
        self.t0 = 0.0
        self.ready_at = 0.0  # when the connection, or implicit TLS on it, was up
        self.conn: SMTPClientProtocol | None = None
        self.address: AddressInfo | None = None
        self.tls: TLSInfo | None = None
        self.banner: str | None = None
        self.ehlo_hostname: str | None = None
        self.extensions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    # Bookkeeping

    def _note(self, direction: str, what: str | bytes | Reply, at: float | None = None) -> None:
        if len(self.events) < MAX_TRANSCRIPT_EVENTS:
            self.events.append((perf_counter() if at is None else at, direction, what))

    def _record(self, phase: Phase, started: float, ended: float, reply: Reply | None = None) -> None:
        if reply is None:
            self.phases.append(PhaseResult(phase, round_to_ns(ended - started)))
        else:
            self.phases.append(
                PhaseResult(
                    phase, round_to_ns(ended - started), reply.code, reply.enhanced_status, reply.summary_text
                )
            )

    def _deadline_left(self) -> float:
        return self.timeout - (perf_counter() - self.t0)

    # Commands

    async def _exchange(
        self,
        phase: Phase,
        line: bytes,
        *,
        shown: str | None = None,
        record: bool = True,
        secrets: tuple[str, ...] = (),
    ) -> tuple[Reply, float, float]:
        """Send one command line and read its reply; returns reply, start and end times.
        `secrets` are removed from the reply before anything keeps it (a server may quote us)."""
        assert self.conn is not None
        self.phase = phase
        started = self.conn.send(phase, line)
        self._note("C", line if shown is None else shown, started)
        reply, ended = await self.conn.read_reply(phase)
        if secrets:
            reply = _redacted(reply, secrets)
        self._note("S", reply, ended)
        if record:
            self._record(phase, started, ended, reply)
        return reply, started, ended

    async def _command(self, phase: Phase, verb: str, argument: str | None = None) -> Reply:
        reply, _, _ = await self._exchange(phase, _command_line(verb, argument))
        if reply.code not in _OK_CODES[phase]:
            raise ReplyError(phase, reply)
        return reply

    # The conversation

    async def run(self) -> ProbeResult:
        start_timestamp = time.time()
        self.t0 = perf_counter()
        failure: Failure | None = None
        try:
            async with asyncio.timeout(self.timeout):
                await self._converse()
        except ProbeError as exc:
            failure = Failure(exc.phase, exc.reason, exc.message)
        except TimeoutError:
            failure = Failure(
                self.phase, FailureReason.TIMEOUT, f"no answer within the {self.timeout:g}s deadline"
            )
            self._note("*", f"timeout in {self.phase.value}")
        except OSError as exc:  # a write to a socket the peer has reset
            failure = Failure(self.phase, FailureReason.CONNECTION_CLOSED, f"connection lost: {exc}")
        finally:
            if self.conn is not None:
                if failure is not None and failure.reason is not FailureReason.TIMEOUT:
                    await self._quit_after_failure()
                self.conn.close(abort=failure is not None or self.tls is not None)
        if failure is None and self.module.fail_on_quit:
            quit_phase = self.phases[-1] if self.phases and self.phases[-1].phase is Phase.QUIT else None
            if quit_phase is None or quit_phase.reply_code != ReplyCode.CLOSING:
                failure = self._quit_failure(quit_phase)
        if failure is not None:
            self._note(
                "*", f"probe failed in {failure.phase.value}: {failure.reason.value}: {failure.message}"
            )
        return ProbeResult(
            target=self.target_text,
            module=self.module_name,
            success=failure is None,
            start_timestamp=start_timestamp,
            duration_seconds=round_to_ns(perf_counter() - self.t0),
            phases=tuple(self.phases),
            failure=failure,
            tls=self.tls,
            server=ServerInfo(
                banner=self.banner, ehlo_hostname=self.ehlo_hostname, extensions=self.extensions
            ),
            address=self.address,
            mx=self.mx,
            transcript=Transcript(self.events, self.t0),
        )

    def _quit_failure(self, quit_phase: PhaseResult | None) -> Failure:
        if quit_phase is None or quit_phase.reply_code is None:
            return Failure(Phase.QUIT, FailureReason.CONNECTION_CLOSED, "no reply to QUIT")
        code = quit_phase.reply_code
        reason = {4: FailureReason.REPLY_TEMPORARY, 5: FailureReason.REPLY_PERMANENT}.get(
            code // 100, FailureReason.UNEXPECTED_REPLY
        )
        return Failure(
            Phase.QUIT, reason, f"unexpected reply to quit: {code} {quit_phase.reply or ''}".rstrip()
        )

    async def _converse(self) -> None:
        module = self.module
        await self._connect(await self._resolve())
        if module.implicit_tls:
            await self._tls()
        await self._banner()
        offered = await self._ehlo(Phase.EHLO)
        if module.starttls is not StartTLS.NEVER and not module.implicit_tls:
            if "STARTTLS" in offered:
                await self._command(Phase.STARTTLS, "STARTTLS")
                assert self.conn is not None
                self.conn.ready_for_tls(Phase.STARTTLS)
                await self._tls()
                offered = await self._ehlo(Phase.EHLO_TLS)
            elif module.starttls is StartTLS.REQUIRED:
                raise ProbeError(
                    Phase.STARTTLS, FailureReason.STARTTLS_NOT_OFFERED, "the server did not offer STARTTLS"
                )
        missing = [ext for ext in module.expect.extensions if ext not in offered]
        if missing:
            raise ProbeError(
                self.phase, FailureReason.EXPECTATION_FAILED, f"extensions not offered: {', '.join(missing)}"
            )
        if module.auth is not None:
            await self._auth(module.auth, offered)
        if module.transaction is not Transaction.NONE:
            await self._transaction()
        await self._quit()

    async def _resolve(self) -> list[Candidate]:
        target = self.target
        if target.ip is not None:
            return [Candidate(Address(target.host, target.ip.version), None)]
        started = perf_counter() - self.pre_resolve_seconds
        ip_protocol = self.module.ip_protocol
        if self.lookup_mx:
            hosts = await self.dns.mx_hosts(target.host)
            found = await asyncio.gather(
                *(self.dns.addresses(mx.host, ip_protocol) for mx in hosts), return_exceptions=True
            )
            candidates = []
            for mx, addresses in zip(hosts, found, strict=True):
                if isinstance(addresses, BaseException):
                    if not isinstance(addresses, ProbeError):
                        raise addresses
                    self._note("*", f"MX {mx.host}: {addresses.message}")
                    continue
                candidates += [Candidate(address, mx) for address in addresses]
            if not candidates:
                first = found[0]
                assert isinstance(first, ProbeError)
                raise first
        else:
            addresses = await self.dns.addresses(target.host, ip_protocol)
            candidates = [Candidate(address, self.mx) for address in addresses]
        self._record(Phase.RESOLVE, started, perf_counter())
        return candidates

    async def _connect(self, candidates: list[Candidate]) -> None:
        self.phase = Phase.CONNECT
        loop = asyncio.get_running_loop()
        port = self.target.port
        started = perf_counter()
        last_error: ProbeError | None = None
        for address, mx in candidates:
            via = f" (MX {mx.host})" if mx is not None else ""
            self._note("*", f"connecting to {address.ip} port {port}{via}")
            protocol = SMTPClientProtocol()
            try:
                await loop.create_connection(lambda p=protocol: p, address.ip, port)  # type: ignore[misc]
            except OSError as exc:
                reason = _CONNECT_ERRORS.get(exc.errno or 0, FailureReason.NETWORK_UNREACHABLE)
                detail = os.strerror(exc.errno) if exc.errno else str(exc)
                last_error = ProbeError(Phase.CONNECT, reason, f"{address.ip} port {port}{via}: {detail}")
                self._note("*", last_error.message)
                continue
            self.conn = protocol
            self.address = AddressInfo(address.ip, port, address.family)
            self.mx = mx
            self.server_name = self.module.tls_config.server_name or (mx.host if mx else self.target.host)
            self.ready_at = protocol.connected_at
            self._record(Phase.CONNECT, started, protocol.connected_at)
            return
        assert last_error is not None
        raise last_error

    async def _tls(self) -> None:
        assert self.conn is not None and self.tls_context is not None
        self.phase = Phase.TLS
        started = perf_counter()
        verifying = self.tls_context.verify_mode != ssl.CERT_NONE
        try:
            await self.conn.start_tls(self.tls_context, self.server_name, self._deadline_left())
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
            self._note("*", f"TLS certificate verification failed: {message}")
            raise ProbeError(Phase.TLS, FailureReason.TLS_CERT_INVALID, message) from exc
        except (ssl.SSLError, ConnectionError) as exc:
            message = f"TLS handshake failed: {exc}"
            self._note("*", message)
            raise ProbeError(Phase.TLS, FailureReason.TLS_HANDSHAKE_FAILED, message) from exc
        except TimeoutError:
            raise ProbeTimeoutError(Phase.TLS, "TLS handshake did not complete in time") from None
        ended = self.ready_at = perf_counter()
        sslobj = self.conn.ssl_object
        assert sslobj is not None
        self.tls = session_info(self.certificates, sslobj, verified=verifying)
        self._record(Phase.TLS, started, ended)
        self._note("*", f"TLS {self.tls.version} {self.tls.cipher}, certificate subject {self.tls.subject}")

    async def _banner(self) -> None:
        assert self.conn is not None
        self.phase = Phase.BANNER
        # The greeting is waited for from the moment the connection (or implicit TLS) was up,
        # not from when this coroutine resumed: the 220 may already have arrived by then.
        started = self.ready_at
        reply, ended = await self.conn.read_reply(Phase.BANNER)
        self._note("S", reply, ended)
        self._record(Phase.BANNER, min(started, ended), ended, reply)
        self.banner = reply.summary_text
        if reply.code != ReplyCode.SERVICE_READY:
            raise ReplyError(Phase.BANNER, reply)
        pattern = self.module.expect.banner
        if pattern is not None and re.search(pattern, reply.text) is None:
            raise ProbeError(
                Phase.BANNER,
                FailureReason.EXPECTATION_FAILED,
                f"banner does not match {pattern!r}: {self.banner}",
            )

    async def _ehlo(self, phase: Phase) -> dict[str, tuple[str, ...]]:
        reply, _, _ = await self._exchange(phase, _command_line("EHLO", self.ehlo_name))
        if reply.code == ReplyCode.OK:
            ehlo = parse_ehlo(reply)
            self.ehlo_hostname = ehlo.hostname
            # What the server offers, before and inside TLS: STARTTLS is only offered in the clear
            # (RFC 3207), AUTH often only inside TLS. The later EHLO's parameters win.
            if not self.extensions:  # the first EHLO: share the parsed reply's tuple
                self.extensions = ehlo.extensions
                return dict(ehlo.extensions)
            offered = dict(self.extensions)
            offered.update(ehlo.extensions)
            self.extensions = tuple(offered.items())
            return offered
        if phase is Phase.EHLO and reply.code_class == 5 and self.module.helo_fallback:
            await self._command(Phase.HELO, "HELO", self.ehlo_name)
            return {}
        raise ReplyError(phase, reply)

    async def _auth(self, auth: AuthConfig, offered: dict[str, tuple[str, ...]]) -> None:
        self.phase = Phase.AUTH
        server_mechanisms = {m.upper() for m in offered.get("AUTH", ())}
        if auth.mechanism is AuthMechanism.AUTO:
            choices = [m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in server_mechanisms]
            if not choices:
                raise ProbeError(
                    Phase.AUTH,
                    FailureReason.AUTH_FAILED,
                    "the server offers no AUTH mechanism this probe speaks",
                )
            mechanism: str = choices[0]
        else:
            mechanism = auth.mechanism.value
        password = auth.password.reveal()
        plain = auth_plain_initial(auth.username, password)
        secrets = tuple(s for s in (password, plain, auth_login_step(password)) if s)
        assert self.conn is not None
        started = perf_counter()
        if mechanism == "PLAIN":
            line = encode_command("AUTH", "PLAIN " + plain)
            reply, _, ended = await self._exchange(
                Phase.AUTH, line, shown=f"AUTH PLAIN {REDACTED}", record=False, secrets=secrets
            )
        else:
            reply, _, ended = await self._exchange(
                Phase.AUTH, encode_command("AUTH", mechanism), record=False, secrets=secrets
            )
            steps = [auth.username, password] if mechanism == "LOGIN" else [""]
            for step in steps:
                if reply.code != ReplyCode.AUTH_CONTINUE:
                    break
                try:
                    answer = (
                        auth_login_step(step)
                        if mechanism == "LOGIN"
                        else auth_cram_md5_response(reply.text, auth.username, password)
                    )
                except CommandError as exc:
                    await self._cancel_auth(secrets)
                    raise ProbeError(Phase.AUTH, FailureReason.PROTOCOL_ERROR, str(exc)) from exc
                reply, _, ended = await self._exchange(
                    Phase.AUTH,
                    answer.encode("ascii") + b"\r\n",
                    shown=REDACTED,
                    record=False,
                    secrets=(*secrets, answer),
                )
            if reply.code == ReplyCode.AUTH_CONTINUE:
                self._record(Phase.AUTH, started, ended, reply)
                await self._cancel_auth(secrets)
                raise ReplyError(Phase.AUTH, reply, reason=FailureReason.AUTH_FAILED)
        self._record(Phase.AUTH, started, ended, reply)
        if reply.code != ReplyCode.AUTH_SUCCESSFUL:
            reason = FailureReason.REPLY_TEMPORARY if reply.code_class == 4 else FailureReason.AUTH_FAILED
            raise ReplyError(Phase.AUTH, reply, reason=reason)

    async def _cancel_auth(self, secrets: tuple[str, ...]) -> None:
        """End an AUTH exchange the server still expects an answer in: "*" (RFC 4954 4)."""
        await self._exchange(Phase.AUTH, b"*\r\n", record=False, secrets=secrets)

    async def _transaction(self) -> None:
        """MAIL, each RCPT, then DATA and the message, or RSET: one script (probe/connection.py).
        Several RCPT are one phase, from the first sent to the last reply (or the first refusal)."""
        module = self.module
        steps = [_step(Phase.MAIL, _command_line("MAIL", f"FROM:<{module.mail_from}>"))]
        steps += [
            _step(Phase.RCPT, _command_line("RCPT", f"TO:<{recipient}>")) for recipient in module.rcpt_to
        ]
        if module.transaction is Transaction.ENVELOPE:
            steps.append(_step(Phase.RSET, _command_line("RSET", None)))
        else:
            payload = build_message(
                mail_from=module.mail_from,
                rcpt_to=module.rcpt_to,
                subject=module.message.subject,
                body=module.message.body,
                headers=module.message.headers,
                domain=self.ehlo_name,
                timestamp=time.time(),
                unique=f"smtp-exporter.{secrets.token_hex(8)}",
            )
            steps.append(_step(Phase.DATA, _command_line("DATA", None)))
            steps.append(_step(Phase.MESSAGE, payload, shown=sys.intern(f"<message: {len(payload)} bytes>")))
        await self._script(steps)

    async def _script(self, steps: list[Step]) -> None:
        """Run `steps` as one script, then keep what happened as `_exchange` would have, step by
        step: the transcript, and a phase for each run of steps of one phase that completed,
        also when the deadline cut the script short. Raises for a refusal or a broken script."""
        assert self.conn is not None
        conn = self.conn
        self.phase = steps[0].phase
        script = conn.start_script(steps)
        try:
            await script.done
        finally:
            conn.stop_script()
            refused = self._keep(script)
        if refused is not None:
            raise ReplyError(refused.phase, refused.reply)
        if script.error is not None:
            self.phase = script.error.phase
            raise ProbeError(script.error.phase, script.error.reason, script.error.message)

    def _keep(self, script: Script) -> _Refusal | None:
        steps, sent, replies = script.steps, script.sent, script.replies
        last = len(steps) - 1
        phase_started = 0.0  # when the run of steps of this step's phase began
        for index, started in enumerate(sent):
            step = steps[index]
            if index == 0 or steps[index - 1].phase is not step.phase:
                phase_started = started
            self.phase = step.phase  # where a deadline found the script, if it did
            self._note("C", step.line if step.shown is None else step.shown, started)
            if index == len(replies):
                break
            reply, ended = replies[index]
            self._note("S", reply, ended)
            refused = reply.code not in step.expected
            if refused or index == last or steps[index + 1].phase is not step.phase:
                self._record(step.phase, phase_started, ended, reply)
            if refused:
                return _Refusal(step.phase, reply)
        return None

    async def _quit(self) -> None:
        """QUIT's reply is recorded; it fails the probe only with `fail_on_quit`. Without it, a
        server that does not answer QUIT costs at most QUIT_GRACE_SECONDS, not the deadline."""
        if self.module.fail_on_quit:
            await self._exchange(Phase.QUIT, b"QUIT\r\n")
            return
        try:
            async with asyncio.timeout(min(QUIT_GRACE_SECONDS, max(self._deadline_left() - 0.01, 0.0))):
                await self._exchange(Phase.QUIT, b"QUIT\r\n")
        except (ProbeError, TimeoutError) as exc:
            detail = exc.message if isinstance(exc, ProbeError) else "no reply"
            self._note("*", f"QUIT: {detail} (not a failure: fail_on_quit is off)")

    async def _quit_after_failure(self) -> None:
        """Say goodbye after a failure, briefly and within the deadline; never raises."""
        conn = self.conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return
        grace = min(QUIT_GRACE_SECONDS, self._deadline_left())
        if grace <= 0:
            return
        try:
            conn.send(Phase.QUIT, b"QUIT\r\n")
            self._note("C", "QUIT")
            async with asyncio.timeout(grace):
                reply, at = await conn.read_reply(Phase.QUIT)
            self._note("S", reply, at)
        except (ProbeError, TimeoutError, OSError):
            pass


def _redacted(reply: Reply, secrets: tuple[str, ...]) -> Reply:
    if not any(secret in line for line in reply.lines for secret in secrets):
        return reply
    lines = []
    for line in reply.lines:
        for secret in secrets:
            line = line.replace(secret, REDACTED)
        lines.append(line)
    return Reply(reply.code, tuple(lines))


def this_host_fqdn() -> str:
    name = socket.getfqdn()
    return name if name and name != "localhost" else "localhost.localdomain"
