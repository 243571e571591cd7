"""The end of an SMTP session: the mail transaction, QUIT, and how a failure ends it.

`MailTransaction` is the part of `ClientSession` (protocol/session.py) that runs once the
greeting, TLS and AUTH are done: MAIL with the parameters protocol/envelope.py chose, each
RCPT, then DATA and the message (or BDAT, or RSET), then QUIT. With PIPELINING (RFC 2920)
MAIL, every RCPT and DATA go in one write; each phase is still timed from that write to its
own reply, so the phases overlap. A failure anywhere says goodbye with QUIT, except where the
server could read QUIT as message text.
"""

from __future__ import annotations

from collections import deque

from smtp_exporter.config.schema import ModuleConfig
from smtp_exporter.model import Failure, FailureReason, Phase, PhaseResult, Transaction
from smtp_exporter.protocol.commands import encode_command
from smtp_exporter.protocol.envelope import EnvelopeRefused, Extensions, Sender, compile_sender, plan_envelope
from smtp_exporter.protocol.exchange import CLOSING, DONE, TALKING, Command, Exchange, Handler
from smtp_exporter.protocol.reply import Reply, ReplyCode

QUIT_LINE = b"QUIT\r\n"
_OK = (ReplyCode.OK,)
_RCPT_OK = (ReplyCode.OK, ReplyCode.USER_NOT_LOCAL)
_DATA_OK = (ReplyCode.START_MAIL_INPUT,)
_REPLY_CLASS_REASONS = {4: FailureReason.REPLY_TEMPORARY, 5: FailureReason.REPLY_PERMANENT}


class MailTransaction(Exchange):
    """MAIL to QUIT, and the failure handling the whole session shares."""

    def __init__(
        self, module: ModuleConfig, *, timeout: float, message: bytes | None, sender: Sender | None = None
    ) -> None:
        super().__init__()
        self.module = module
        self.sender = compile_sender(module) if sender is None else sender
        self.timeout = timeout  # the deadline in seconds, for its failure message
        self.message = message
        self.pipelined = False  # the transaction went out as one batch (smtp_probe_pipelined)
        self._tls_up = False
        self._lost = False
        self._quitting = False  # the closing QUIT is out, and its fate cannot fail the probe
        self._steps: deque[Command] = deque()  # the rest of the mail transaction, not yet queued
        self._recipients_accepted = 0
        # When the 250 after the message (its final dot, or BDAT LAST) arrived: the delivery
        # phase starts there.
        self.message_accepted_at: float | None = None

    # Failures

    def _fail(
        self, phase: Phase, reason: FailureReason, message: str, *, say_quit: bool | None = None
    ) -> None:
        if self.failure is not None or self.status is DONE:
            return
        if self._quitting and phase is Phase.QUIT:
            self._not_a_failure(message)
            return
        self.failure = Failure(phase, reason, message)
        self._outbox.clear()
        if say_quit is None:
            say_quit = self.status is TALKING and reason is not FailureReason.TIMEOUT
        if not say_quit or self._lost:
            self.status = DONE
            return
        # Say goodbye, briefly: replies still due to earlier commands are only noted. A DATA
        # still unanswered (a pipelined batch) decides first whether QUIT would be read as text.
        self.status = CLOSING
        data_pending = False
        for command in self._awaiting:
            data_pending = data_pending or command.phase is Phase.DATA
            command.on_reply = _AFTER_FAILURE.get(command.phase, _ignore)
        if not data_pending:
            self._send(Phase.QUIT, QUIT_LINE, MailTransaction._on_goodbye, shown="QUIT")

    def _refused(self, phase: Phase, reply: Reply, reason: FailureReason | None = None) -> None:
        if reason is None:
            reason = _REPLY_CLASS_REASONS.get(reply.code_class, FailureReason.UNEXPECTED_REPLY)
        self._fail(phase, reason, f"unexpected reply to {phase.value}: {reply.summary()}")

    def _not_a_failure(self, detail: str) -> None:
        """The closing QUIT without `fail_on_quit`: whatever happens to it is only noted."""
        self._note(self._now, "*", f"QUIT: {detail} (not a failure: fail_on_quit is off)")
        self._outbox.clear()
        self._awaiting.clear()
        self.status = DONE

    def _after_failure(self, command: Command, reply: Reply, at: float) -> None:
        """The reply to a pipelined DATA after the batch failed earlier (RFC 2920 3.1)."""
        if reply.code != ReplyCode.START_MAIL_INPUT:
            self._send(Phase.QUIT, QUIT_LINE, MailTransaction._on_goodbye, shown="QUIT")
        elif self._recipients_accepted == 0:
            # No recipient: the server waits for a message all the same; a single dot ends it.
            self._send(Phase.MESSAGE, b".\r\n", MailTransaction._on_empty_message)
        else:
            # Some recipients were accepted: ending the message would deliver it. Closing the
            # connection mid-message aborts the transaction (RFC 5321 3.8).
            self._note(at, "*", "closing without ending the message, so nothing is delivered")
            self.status = DONE

    def _rcpt_after_failure(self, command: Command, reply: Reply, at: float) -> None:
        """A later recipient of a batch that failed earlier: one it accepted would receive
        whatever message ends the transaction (even the lone dot)."""
        if reply.code in _RCPT_OK:
            self._recipients_accepted += 1

    def _on_empty_message(self, command: Command, reply: Reply, at: float) -> None:
        self._send(Phase.QUIT, QUIT_LINE, MailTransaction._on_goodbye, shown="QUIT")

    # The mail transaction

    def _start_transaction(self, offered: Extensions) -> None:
        """MAIL, each RCPT, then DATA and the message, BDAT, or RSET. Several RCPT are one
        phase, from the first sent to the last reply (or the first refusal)."""
        module = self.module
        if module.transaction is Transaction.NONE:
            self._quit()
            return
        self.phase = Phase.MAIL
        sender = self.sender
        envelope = plan_envelope(module, sender, offered, self.message, tls=self._tls_up)
        if isinstance(envelope, EnvelopeRefused):
            self._fail(Phase.MAIL, FailureReason.EXPECTATION_FAILED, envelope.message)
            return
        step = MailTransaction._on_step
        steps = self._steps
        mail = " ".join((sender.mail_from, *envelope.parameters))
        steps.append(Command(Phase.MAIL, encode_command("MAIL", mail), step, expected=_OK))
        for rcpt in sender.rcpt_lines:
            steps.append(Command(Phase.RCPT, rcpt, step, expected=_RCPT_OK))
        if module.transaction is Transaction.ENVELOPE:
            steps.append(Command(Phase.RSET, b"RSET\r\n", step, expected=_OK))
        elif envelope.chunked:
            assert self.message is not None
            content = _undotted(self.message)
            line = f"BDAT {len(content)} LAST"
            shown = f"{line} <message: {len(content)} bytes>"
            payload = line.encode("ascii") + b"\r\n" + content
            steps.append(Command(Phase.MESSAGE, payload, step, expected=_OK, shown=shown))
        else:
            assert self.message is not None, "transaction: message needs the message"
            steps.append(Command(Phase.DATA, b"DATA\r\n", step, expected=_DATA_OK))
            shown = f"<message: {len(self.message)} bytes>"
            steps.append(Command(Phase.MESSAGE, self.message, step, expected=_OK, shown=shown))
        if envelope.pipelined:
            # RFC 2920 3.1: the batch ends with DATA (or RSET); BDAT waits for the replies.
            self.pipelined = True
            while steps and steps[0].phase in _BATCH:
                self._outbox.append(steps.popleft())
            self._note(self._now, "*", f"PIPELINING: {_batch_text(self._outbox)} in one write")
        else:
            self._outbox.append(steps.popleft())

    def _on_step(self, command: Command, reply: Reply, at: float) -> None:
        phase = command.phase
        if self.pipelined and reply.code == ReplyCode.START_MAIL_INPUT and phase is not Phase.DATA:
            # DATA's 354 in MAIL's or a RCPT's place: a reply of the batch is missing, and the
            # server is reading a message already, so no QUIT follows (it would be text). (A 2xx
            # in DATA's place stays an unexpected reply: a server answering DATA 250 looks the
            # same as one that answered twice earlier.)
            self._record(phase, reply, at)
            message = (
                f"354 where the reply to {phase.value} belongs: the server broke the pipelined"
                f" batch (a reply missing or out of place): {reply.summary()}"
            )
            self._fail(phase, FailureReason.PROTOCOL_ERROR, message, say_quit=False)
            return
        refused = reply.code not in command.expected
        awaiting, steps = self._awaiting, self._steps
        upcoming = awaiting[0] if awaiting else steps[0] if steps else None
        if refused or upcoming is None or upcoming.phase is not phase:
            self._record(phase, reply, at)
        if refused:
            self._refused(phase, reply)
            return
        if phase is Phase.RCPT:
            self._recipients_accepted += 1
        elif phase is Phase.MESSAGE:
            self.message_accepted_at = at
        if awaiting:
            return  # the rest of a pipelined batch is still being answered
        if steps:
            self._outbox.append(steps.popleft())
        else:
            self._quit()

    # QUIT

    def _quit(self) -> None:
        """QUIT's reply is recorded; it fails the probe only with `fail_on_quit`."""
        self._quitting = not self.module.fail_on_quit
        self._send(Phase.QUIT, QUIT_LINE, MailTransaction._on_quit)

    def _on_goodbye(self, command: Command, reply: Reply, at: float) -> None:
        self.status = DONE

    def _on_quit(self, command: Command, reply: Reply, at: float) -> None:
        self._record(Phase.QUIT, reply, at)
        self._quitting = False
        self.status = DONE


_BATCH = frozenset((Phase.MAIL, Phase.RCPT, Phase.DATA, Phase.RSET))
_AFTER_FAILURE: dict[Phase, Handler] = {
    Phase.DATA: MailTransaction._after_failure,
    Phase.RCPT: MailTransaction._rcpt_after_failure,
}


def _batch_text(batch: list[Command]) -> str:
    """ "MAIL, 2 RCPT and DATA": the commands of a batch (MAIL, each RCPT, then DATA or RSET
    unless BDAT follows), for the transcript."""
    last = batch[-1].phase
    recipients = len(batch) - 1 if last is Phase.RCPT else len(batch) - 2
    rcpt = "RCPT" if recipients == 1 else f"{recipients} RCPT"
    return f"MAIL and {rcpt}" if last is Phase.RCPT else f"MAIL, {rcpt} and {last.value.upper()}"


def _undotted(message: bytes) -> bytes:
    """The DATA payload without its dot-stuffing and final ".CRLF": what BDAT sends (RFC 3030
    2: the data is sent as it is). Its first line is the Date header, never a dot."""
    return message[:-3].replace(b"\r\n..", b"\r\n.")


def _ignore(session: MailTransaction, command: Command, reply: Reply, at: float) -> None:
    """A reply to a command sent before the probe failed: noted, and nothing more."""


def quit_failure(quit_phase: PhaseResult | None) -> Failure:
    """Why QUIT fails a probe under `fail_on_quit`."""
    if quit_phase is None or quit_phase.reply_code is None:
        return Failure(Phase.QUIT, FailureReason.CONNECTION_CLOSED, "no reply to QUIT")
    code = quit_phase.reply_code
    reason = _REPLY_CLASS_REASONS.get(code // 100, FailureReason.UNEXPECTED_REPLY)
    return Failure(Phase.QUIT, reason, f"unexpected reply to quit: {code} {quit_phase.reply or ''}".rstrip())
