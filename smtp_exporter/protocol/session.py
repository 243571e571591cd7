"""The SMTP client session (RFC 5321, 3207, 4954) as one state machine over bytes.

The driver (probe/connection.py) tells a `ClientSession` what happened, each time with the
moment it happened: the connection is made, bytes arrived, TLS is up, the connection is lost,
the deadline passed. It asks the session what to do next: the bytes to send
(`bytes_to_send`), whether to start TLS now (`status is Status.TLS`), and at the end its
`outcome()`. The session never reads a clock and never touches a socket, so everything about
the conversation is decided, and tested (tests/protocol/test_session.py), here: which command
comes next, the codes each phase accepts, the STARTTLS injection guard, unsolicited replies,
phase durations, the transcript and the failure (phase, reason, message). The mail
transaction and QUIT are protocol/transaction.py's; the queue of commands and replies under
them is protocol/exchange.py's.
"""

from __future__ import annotations

import re

from smtp_exporter.config.schema import ModuleConfig, Secret, StartTLS
from smtp_exporter.model import (
    Failure,
    FailureReason,
    Phase,
    PhaseResult,
    ServerInfo,
    round_to_ns,
)
from smtp_exporter.protocol.auth import AuthExchange, choose_mechanism, no_mechanism_message
from smtp_exporter.protocol.commands import CommandError, encode_command
from smtp_exporter.protocol.ehlo import parse_ehlo
from smtp_exporter.protocol.envelope import Extensions, Sender
from smtp_exporter.protocol.exchange import (
    CLOSING,
    DONE,
    TALKING,
    TLS,
    Command,
    Outcome,
    Status,
)
from smtp_exporter.protocol.reply import NotAReplyError, ProtocolError, Reply, ReplyCode
from smtp_exporter.protocol.transaction import MailTransaction, quit_failure

__all__ = ["ClientSession", "Outcome", "Status"]

ExtensionList = tuple[tuple[str, tuple[str, ...]], ...]


class ClientSession(MailTransaction):
    """One SMTP conversation of one probe, from the connection to the last reply.

    Inputs: `resolved`/`connecting`, `connection_made`, `data_received`, `tls_established`,
    `connection_lost`, `deadline_reached`, `fail` (what the driver itself found wrong) and
    `note` (its own transcript events). Outputs: `bytes_to_send`, `status`, `outcome()`.
    `message` is the DATA payload, built by the caller (it needs a clock and randomness) before
    the transaction starts; `sender`, the module's compiled `Sender` (made from `module` when
    not given).
    """

    def __init__(
        self,
        module: ModuleConfig,
        *,
        ehlo_name: str,
        timeout: float,
        message: bytes | None = None,
        sender: Sender | None = None,
    ) -> None:
        super().__init__(module, timeout=timeout, message=message, sender=sender)
        self.ehlo_name = ehlo_name
        self.token: Secret | None = None  # an OAuth mechanism's bearer token, read by the driver per probe
        self.banner: str | None = None
        self.ehlo_hostname: str | None = None
        self.extensions: ExtensionList = ()  # of the latest EHLO (inside TLS once it is up)
        self._offered: Extensions = {}  # the latest EHLO's extensions, for the transaction
        self._auth: AuthExchange | None = None  # while AUTH is under way (its secrets leave replies)
        self._auth_failure: Failure | None = None  # what ends AUTH once "*" is answered

    # Inputs

    def connecting(self) -> None:
        self.phase = Phase.CONNECT

    def resolved(self, started: float, ended: float) -> None:
        self.phases.append(PhaseResult(Phase.RESOLVE, round_to_ns(ended - started)))
        self.phase = Phase.CONNECT

    def connection_made(self, started: float, ended: float) -> None:
        self.phases.append(PhaseResult(Phase.CONNECT, round_to_ns(ended - started)))
        if self.module.implicit_tls:
            self.status = TLS
            self.phase = Phase.TLS
        else:
            self._await_banner(ended)

    def tls_established(self, started: float, ended: float) -> None:
        if self.status is not TLS:
            return
        self.phases.append(PhaseResult(Phase.TLS, round_to_ns(ended - started)))
        self._tls_up = True
        if self.module.implicit_tls:
            self._await_banner(ended)
        else:
            self.status = TALKING
            self._send_ehlo(Phase.EHLO_TLS)

    def data_received(self, data: bytes, at: float) -> None:
        self._now = at
        status = self.status
        if status is TLS:
            if self.module.implicit_tls:
                return  # bytes before the handshake are not SMTP over TLS: the handshake judges them
            self._injected()
            return
        if (status is not TALKING and status is not CLOSING) or self._parser.broken:
            return
        try:
            replies = self._parser.feed(data)
        except NotAReplyError as exc:
            self._fail(self._current_phase(), FailureReason.UNEXPECTED_REPLY, str(exc))
            return
        except ProtocolError as exc:
            self._fail(self._current_phase(), FailureReason.PROTOCOL_ERROR, str(exc))
            return
        for reply in replies:
            self._reply(reply, at)
        if self.status is TLS and self._parser.pending:
            self._injected()

    def connection_lost(self, at: float, detail: str | None = None) -> None:
        """End of stream or a broken connection (`detail` is what broke it, if anything)."""
        self._now = at
        self._lost = True
        status = self.status
        if status is CLOSING:
            self.status = DONE
        elif status is TALKING:
            suffix = f": {detail}" if detail else ""
            self._fail(
                self._current_phase(),
                FailureReason.CONNECTION_CLOSED,
                f"connection closed by the server{suffix}",
            )
        # CONNECTING and TLS: the driver's connect or handshake reports what went wrong.

    def deadline_reached(self, at: float) -> None:
        self._now = at
        status = self.status
        if status is DONE:
            return
        if status is CLOSING:
            self.status = DONE
        elif self._quitting:
            self._not_a_failure("no reply")
        else:
            phase = self._current_phase()
            self._note(at, "*", f"timeout in {phase.value}")
            self._fail(phase, FailureReason.TIMEOUT, f"no answer within the {self.timeout:g}s deadline")

    def fail(self, at: float, reason: FailureReason, message: str, phase: Phase | None = None) -> None:
        """A failure the driver found (connect, TLS, DNS, the exporter's own side): no QUIT follows."""
        self._now = at
        if self.status is DONE:
            return
        self._outbox.clear()
        self._awaiting.clear()
        self._fail(phase or self.phase, reason, message, say_quit=False)
        self.status = DONE  # whatever came first, the driver is done with this connection

    # Outputs

    def outcome(self, at: float) -> Outcome:
        """The conversation as it ended (or as far as it went); `at` is when the probe ended.
        Called once, at the end: it adds the final transcript event."""
        failure = self.failure
        if failure is None and self.module.fail_on_quit:
            last = self.phases[-1] if self.phases else None
            quit_phase = last if last is not None and last.phase is Phase.QUIT else None
            if quit_phase is None or quit_phase.reply_code != ReplyCode.CLOSING:
                failure = quit_failure(quit_phase)
        if failure is not None:
            self._note(
                at, "*", f"probe failed in {failure.phase.value}: {failure.reason.value}: {failure.message}"
            )
        server = ServerInfo(banner=self.banner, ehlo_hostname=self.ehlo_hostname, extensions=self.extensions)
        return Outcome(tuple(self.phases), self.events, failure, server, self.pipelined)

    def _injected(self) -> None:
        """Bytes the server sent in the clear after its 220 to STARTTLS (CVE-2011-0411): they
        would be read as if TLS protected them, so TLS is not started over them."""
        self._fail(
            Phase.STARTTLS,
            FailureReason.PROTOCOL_ERROR,
            "server sent data after its STARTTLS reply",
            say_quit=True,
        )

    # Replies

    def _reply(self, reply: Reply, at: float) -> None:
        if self.status is DONE:
            return
        if self._auth is not None:
            reply = self._auth.redact(reply)
        if not self._awaiting:
            self._unsolicited(reply)
            return
        command = self._awaiting.popleft()
        self._note(at, "S", reply)
        command.on_reply(self, command, reply, at)

    def _unsolicited(self, reply: Reply) -> None:
        if self.status is TLS:
            self._injected()
        elif self.status is TALKING:
            phase = self._outbox[0].phase if self._outbox else self.phase
            self._fail(
                phase,
                FailureReason.PROTOCOL_ERROR,
                f"unsolicited reply before {phase.value}: {reply.summary()}",
            )
        # CLOSING: replies after a failure are not read.

    def _await_banner(self, ready: float) -> None:
        # Waited for from the moment the connection (or implicit TLS on it) was up.
        self.status = TALKING
        self.phase = self._sent_phase = Phase.BANNER
        self._started = ready
        self._awaiting.append(Command(Phase.BANNER, b"", ClientSession._on_banner))

    def _on_banner(self, command: Command, reply: Reply, at: float) -> None:
        self._record(Phase.BANNER, reply, at, started=min(self._started, at))
        self.banner = reply.summary_text
        if reply.code != ReplyCode.SERVICE_READY:
            self._refused(Phase.BANNER, reply)
            return
        pattern = self.module.expect.banner
        if pattern is not None and re.search(pattern, reply.text) is None:
            self._fail(
                Phase.BANNER,
                FailureReason.EXPECTATION_FAILED,
                f"banner does not match {pattern!r}: {self.banner}",
            )
            return
        self._send_ehlo(Phase.EHLO)

    def _send_ehlo(self, phase: Phase) -> None:
        self._send(phase, encode_command("EHLO", self.ehlo_name), ClientSession._on_ehlo)

    def _on_ehlo(self, command: Command, reply: Reply, at: float) -> None:
        phase = command.phase
        self._record(phase, reply, at)
        if reply.code == ReplyCode.OK:
            ehlo = parse_ehlo(reply)
            self.ehlo_hostname = ehlo.hostname
            extensions = ehlo.extensions  # the parsed reply's tuple, shared
            if phase is Phase.EHLO_TLS:
                # RFC 3207 4.2: what the clear-text EHLO said is forgotten (a server may offer
                # AUTH only before TLS, or other parameters). Only STARTTLS, offered there and
                # used, stays a fact of the server.
                extensions = _with_starttls(extensions, self.extensions)
            self.extensions = extensions
            offered = dict(extensions)
            self._after_greeting(offered)
        elif phase is Phase.EHLO and reply.code_class == 5 and self.module.helo_fallback:
            self._send(Phase.HELO, encode_command("HELO", self.ehlo_name), ClientSession._on_helo)
        else:
            self._refused(phase, reply)

    def _on_helo(self, command: Command, reply: Reply, at: float) -> None:
        self._record(Phase.HELO, reply, at)
        if reply.code != ReplyCode.OK:
            self._refused(Phase.HELO, reply)
            return
        self._after_greeting({})

    def _after_greeting(self, offered: Extensions) -> None:
        module = self.module
        self._offered = offered
        if module.starttls is not StartTLS.NEVER and not module.implicit_tls and not self._tls_up:
            if "STARTTLS" in offered:
                self._send(Phase.STARTTLS, b"STARTTLS\r\n", ClientSession._on_starttls)
                return
            if module.starttls is StartTLS.REQUIRED:
                self._fail(
                    Phase.STARTTLS, FailureReason.STARTTLS_NOT_OFFERED, "the server did not offer STARTTLS"
                )
                return
        missing = [ext for ext in module.expect.extensions if ext not in offered]
        if missing:
            self._fail(
                self.phase, FailureReason.EXPECTATION_FAILED, f"extensions not offered: {', '.join(missing)}"
            )
        elif module.auth is not None:
            self._start_auth(offered)
        else:
            self._start_transaction(offered)

    def _on_starttls(self, command: Command, reply: Reply, at: float) -> None:
        self._record(Phase.STARTTLS, reply, at)
        if reply.code != ReplyCode.SERVICE_READY:
            self._refused(Phase.STARTTLS, reply)
            return
        # Whatever else this chunk holds is checked by data_received (the injection guard).
        self.status = TLS
        self.phase = Phase.TLS

    # AUTH (RFC 4954)

    def _start_auth(self, offered: Extensions) -> None:
        auth = self.module.auth
        assert auth is not None
        self.phase = Phase.AUTH
        server_mechanisms = offered.get("AUTH", ())
        mechanism = choose_mechanism(auth, server_mechanisms)
        if mechanism is None:
            message = no_mechanism_message(auth, server_mechanisms)
            self._fail(Phase.AUTH, FailureReason.AUTH_FAILED, message)
            return
        token = None if self.token is None else self.token.reveal()
        exchange = self._auth = AuthExchange(auth, mechanism, token)
        self._send(Phase.AUTH, exchange.first_line, ClientSession._on_auth, shown=exchange.first_shown)

    def _on_auth(self, command: Command, reply: Reply, at: float) -> None:
        exchange = self._auth
        assert exchange is not None
        if reply.code == ReplyCode.AUTH_CONTINUE and exchange.mechanism != "PLAIN":
            try:
                answer = exchange.answer(reply)
            except CommandError as exc:
                self._cancel_auth(Failure(Phase.AUTH, FailureReason.PROTOCOL_ERROR, str(exc)))
                return
            if answer is not None:
                line, shown = answer
                self._send(Phase.AUTH, line, ClientSession._on_auth, shown=shown)
                return
            # Still asked for more after the last answer: the credentials were not accepted.
            self._record(Phase.AUTH, reply, at)
            failure = Failure(Phase.AUTH, FailureReason.AUTH_FAILED, exchange.failure_message(reply))
            self._cancel_auth(failure)
            return
        self._record(Phase.AUTH, reply, at)
        if reply.code != ReplyCode.AUTH_SUCCESSFUL:
            reason = FailureReason.REPLY_TEMPORARY if reply.code_class == 4 else FailureReason.AUTH_FAILED
            self._fail(Phase.AUTH, reason, exchange.failure_message(reply))
            return
        self._auth = None
        self._start_transaction(self._offered)

    def _cancel_auth(self, failure: Failure) -> None:
        """End an AUTH exchange the server still expects an answer in: "*" (RFC 4954 4)."""
        self._auth_failure = failure
        self._send(Phase.AUTH, b"*\r\n", ClientSession._on_auth_cancelled)

    def _on_auth_cancelled(self, command: Command, reply: Reply, at: float) -> None:
        failure = self._auth_failure
        assert failure is not None
        self._fail(failure.phase, failure.reason, failure.message)


def _with_starttls(inside_tls: ExtensionList, in_clear: ExtensionList) -> ExtensionList:
    """The extensions offered inside TLS, and STARTTLS as the clear-text EHLO offered it."""
    if any(keyword == "STARTTLS" for keyword, _ in inside_tls):
        return inside_tls
    starttls = [entry for entry in in_clear if entry[0] == "STARTTLS"]
    return (*inside_tls, *starttls)
