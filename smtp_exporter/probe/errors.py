"""The typed exception name resolution raises; it carries its phase and reason.

It never leaves the engine: `Conversation` (and `Prober.probe_each_mx`) turn it into a
`Failure` in the result.
"""

from __future__ import annotations

from smtp_exporter.model import FailureReason, Phase


class ProbeError(Exception):
    def __init__(self, phase: Phase, reason: FailureReason, message: str):
        super().__init__(message)
        self.phase = phase
        self.reason = reason
        self.message = message
