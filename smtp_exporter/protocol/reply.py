"""SMTP replies (RFC 5321 4.2): a bounded, incremental parser over bytes."""

from __future__ import annotations

import enum
from typing import NamedTuple

from smtp_exporter.memo import remember

# Bounds on what a server may make us buffer. RFC 5321 allows 512 octets per reply line;
# real servers stay far below these. Anything larger is a protocol error, and reading stops.
MAX_LINE_BYTES = 4096
MAX_REPLY_LINES = 64
MAX_REPLY_BYTES = 32 * 1024
MAX_TEXT_CHARS = 512  # reply text kept in results (the full text goes nowhere else)
# Whole replies remembered by their bytes (see `_whole_reply`), up to this many and this long:
# emptied when full, so servers whose replies always differ (queue IDs) cost ~2 MB at most.
MAX_SHARED_REPLIES = 1024
MAX_SHARED_REPLY_BYTES = 1024


class ReplyCode(enum.IntEnum):
    """The reply codes the probe expects (RFC 5321 4.2.2, RFC 4954)."""

    SERVICE_READY = 220
    CLOSING = 221
    AUTH_SUCCESSFUL = 235
    OK = 250
    USER_NOT_LOCAL = 251
    AUTH_CONTINUE = 334
    START_MAIL_INPUT = 354


class ProtocolError(Exception):
    """What the server sent cannot be read as SMTP replies."""


class MalformedReplyError(ProtocolError):
    """A reply that breaks the grammar or the size bounds (reason `protocol_error`)."""


class NotAReplyError(ProtocolError):
    """Text that is not an SMTP reply at all, e.g. another protocol's greeting
    (reason `unexpected_reply`)."""


class Reply(NamedTuple):
    code: int
    lines: tuple[str, ...]  # the text after "NNN-" / "NNN " on each line

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def code_class(self) -> int:
        return self.code // 100

    @property
    def summary_text(self) -> str:
        """The text on one line, capped, without the code: what a phase result keeps (for a
        one-line reply, the line itself, not a copy)."""
        if len(self.lines) == 1 and len(self.lines[0]) <= MAX_TEXT_CHARS:
            return self.lines[0]
        return self.summary()[4:]

    def summary(self) -> str:
        """Code and text on one line, capped: what results and messages keep."""
        text = " ".join(self.lines)
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS] + "..."
        return f"{self.code} {text}".rstrip()


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


_shared_replies: dict[bytes, tuple[Reply, ...]] = {}


def _whole_replies(data: bytes) -> tuple[Reply, ...] | None:
    """`_read_whole_replies`, remembered: reading a reply costs about 17,000 instructions, finding
    it here about 1,000, and servers answer the same bytes at every probe (the greeting, EHLO,
    "250 2.1.0 Ok", the answers to a pipelined batch arriving as one chunk): 117,000
    instructions less per smtp_full probe, a quarter of its CPU."""
    replies = _shared_replies.get(data)
    if replies is None:
        replies = _read_whole_replies(data)
        if replies is not None and len(data) <= MAX_SHARED_REPLY_BYTES:
            remember(_shared_replies, data, replies, limit=MAX_SHARED_REPLIES)
    return replies


def _read_whole_replies(data: bytes) -> tuple[Reply, ...] | None:
    """`data` as one or more whole replies, or None; the line-by-line path then reads it. Each
    reply of several (a pipelined batch's answers, RFC 2920) is the one its own bytes give, the
    remembered object when they were seen alone."""
    ends = _reply_ends(data)
    if ends is None:
        return None
    if len(ends) == 1:
        reply = _read_whole_reply(data)
        return None if reply is None else (reply,)
    replies: list[Reply] = []
    start = 0
    for end in ends:
        piece = _whole_replies(data[start:end])
        if piece is None:
            return None
        replies += piece
        start = end
    return tuple(replies)


def _reply_ends(data: bytes) -> list[int] | None:
    """Where each reply in `data` ends (after its last line's CRLF); None unless `data` ends
    with a reply's last line."""
    ends = []
    line = 0  # where the current line starts
    while line < len(data):
        end = data.find(b"\r\n", line)
        if end < 0:
            return None
        continued = end - line > 3 and data[line + 3] == 0x2D  # "250-...": the reply goes on
        line = end + 2
        if not continued:
            ends.append(line)
    return ends if ends and ends[-1] == len(data) else None


def _read_whole_reply(data: bytes) -> Reply | None:
    """The common case in a few C-level scans: `data` is exactly one well-formed reply with
    CRLF line ends. Returns None for anything else, which the line-by-line path then reads."""
    if len(data) > MAX_LINE_BYTES or not data.endswith(b"\r\n") or b"\x00" in data:
        return None
    lines = data.count(b"\n")
    if lines > MAX_REPLY_LINES or data.count(b"\r") != lines or data.count(b"\r\n") != lines:
        return None
    head = data[:3]
    if not head.isdigit():
        return None
    if lines == 1:
        if len(data) > 5 and data[3] != 0x20:
            return None
        return Reply(int(head), (_decode(data[4:-2]),))
    last = data[data.rfind(b"\n", 0, -2) + 1 :]
    if not data.startswith(head + b"-") or data.count(b"\n" + head + b"-") != lines - 2:
        return None
    if not (last.startswith(head + b" ") or last == head + b"\r\n"):
        return None
    return Reply(int(head), tuple([line[4:] for line in _decode(data[:-2]).split("\r\n")]))


class ReplyParser:
    """Feed bytes as they arrive; get complete replies back.

    Lines end in CRLF; a bare LF is tolerated (lenient servers exist), a bare CR inside a
    line is not. Every bound is checked before data is kept, so a hostile server can make
    this buffer at most MAX_REPLY_BYTES + MAX_LINE_BYTES.
    """

    __slots__ = ("_buffer", "_code", "_lines", "_reply_bytes", "broken")

    def __init__(self) -> None:
        self._buffer = b""
        self._code = -1  # code of the multi-line reply under way, -1 when none
        self._lines: list[str] = []
        self._reply_bytes = 0
        self.broken = False

    @property
    def pending(self) -> bool:
        """Whether part of a reply has been received but not completed."""
        return bool(self._buffer) or self._code != -1

    def feed(self, data: bytes) -> list[Reply]:
        if self.broken:
            raise MalformedReplyError("reading stopped after an earlier protocol error")
        if not self._buffer and self._code == -1:  # nothing under way: one or more whole replies?
            whole = _whole_replies(data)
            if whole is not None:
                return list(whole)
        try:
            return self._feed(data)
        except ProtocolError:
            self.broken = True
            self._buffer = b""
            self._lines = []
            raise

    def _feed(self, data: bytes) -> list[Reply]:
        buffer = self._buffer + data if self._buffer else data
        replies: list[Reply] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                rest = buffer[start:]
                # A full-length line may wait here with its CR while the LF is in flight.
                if len(rest) > MAX_LINE_BYTES + rest.endswith(b"\r"):
                    raise MalformedReplyError(
                        f"reply line longer than {MAX_LINE_BYTES} bytes without a line end"
                    )
                self._buffer = rest
                self._check_bare_cr(rest, partial=True)
                return replies
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)

    @staticmethod
    def _check_bare_cr(line: bytes, *, partial: bool) -> None:
        cr = line.find(b"\r")
        if cr >= 0 and not (partial and cr == len(line) - 1):
            raise MalformedReplyError("bare CR in a reply line")

    def _line(self, line: bytes) -> Reply | None:
        if len(line) > MAX_LINE_BYTES:
            raise MalformedReplyError(f"reply line longer than {MAX_LINE_BYTES} bytes")
        self._reply_bytes += len(line) + 2
        if self._reply_bytes > MAX_REPLY_BYTES:
            raise MalformedReplyError(f"reply longer than {MAX_REPLY_BYTES} bytes")
        if b"\r" in line:
            raise MalformedReplyError("bare CR in a reply line")
        if b"\x00" in line:
            raise MalformedReplyError("NUL byte in a reply line")
        head = line[:3]
        if len(head) < 3 or not head.isdigit() or (len(line) > 3 and line[3] not in b" -"):
            if self._code == -1:
                raise NotAReplyError(f"not an SMTP reply: {_decode(line[:80])!r}")
            raise MalformedReplyError(f"malformed continuation line: {_decode(line[:80])!r}")
        code = int(head)
        if self._code != -1 and code != self._code:
            raise MalformedReplyError(f"continuation line with code {code} inside a {self._code} reply")
        self._lines.append(_decode(line[4:]))
        if len(self._lines) > MAX_REPLY_LINES:
            raise MalformedReplyError(f"reply of more than {MAX_REPLY_LINES} lines")
        if len(line) > 3 and line[3] == 0x2D:  # "-": more lines follow
            self._code = code
            return None
        reply = Reply(code, tuple(self._lines))
        self._code = -1
        self._lines = []
        self._reply_bytes = 0
        return reply
