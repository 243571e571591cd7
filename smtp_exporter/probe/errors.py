"""The typed exceptions the probe engine raises internally; each carries its phase and reason.

They never leave the engine: `Prober.probe` turns them into a `Failure` in the result.
"""

from __future__ import annotations

from smtp_exporter.model import FailureReason, Phase
from smtp_exporter.protocol import Reply


class ProbeError(Exception):
    def __init__(self, phase: Phase, reason: FailureReason, message: str, *, reply: Reply | None = None):
        super().__init__(message)
        self.phase = phase
        self.reason = reason
        self.message = message
        self.reply = reply


class ProbeTimeoutError(ProbeError, TimeoutError):
    def __init__(self, phase: Phase, message: str):
        super().__init__(phase, FailureReason.TIMEOUT, message)


class ReplyError(ProbeError):
    """The server answered, but not with the reply class the phase needs."""

    def __init__(self, phase: Phase, reply: Reply, *, reason: FailureReason | None = None):
        if reason is None:
            if reply.code_class == 4:
                reason = FailureReason.REPLY_TEMPORARY
            elif reply.code_class == 5:
                reason = FailureReason.REPLY_PERMANENT
            else:
                reason = FailureReason.UNEXPECTED_REPLY
        super().__init__(phase, reason, f"unexpected reply to {phase.value}: {reply.summary()}", reply=reply)
