"""The typed exception name resolution raises; it carries its phase and reason.

It never leaves the engine: `Conversation` (and `Prober.probe_each_mx`) turn it into a
`Failure` in the result.
"""

from __future__ import annotations

import errno

from smtp_exporter.model import FailureReason, Phase

# OSErrors that are the exporter's own side (out of descriptors, buffers or memory), not the
# target's: a probe failing with one of these fails with `local_error`.
LOCAL_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
LOCAL_ERROR = "the exporter could not run this probe"


class ProbeError(Exception):
    def __init__(self, phase: Phase, reason: FailureReason, message: str):
        super().__init__(message)
        self.phase = phase
        self.reason = reason
        self.message = message
