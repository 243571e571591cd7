"""IMAP4rev1 (RFC 3501) responses and commands as bytes: the pure part of the delivery check's
IMAP client, like protocol/ for SMTP (no asyncio, socket, ssl or time here).

Only what the delivery check sends and reads: greeting, CAPABILITY, STARTTLS, LOGIN, SELECT,
IDLE (RFC 2177), UID SEARCH / FETCH / STORE / EXPUNGE (RFC 4315), EXPUNGE and LOGOUT. Every read
is bounded: a line, a literal and a whole response each have a limit, and a server that passes
one is a protocol error, never a growing buffer.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_LINE = 256 * 1024  # a SEARCH answer of a large mailbox fits (~35,000 UIDs)
MAX_LITERAL = 1024 * 1024  # a message's header block
MAX_RESPONSE = 2 * 1024 * 1024
# The CR LF of a line, and a literal's announced size at its end: {123} or (LITERAL+) {123+}.
_LITERAL_RE = re.compile(rb"\{(\d{1,10})\+?\}$")
_CODE_RE = re.compile(r"^\[([^\]]*)\]")
_UID_RE = re.compile(r"\bUID (\d+)", re.IGNORECASE)


class IMAPProtocolError(Exception):
    """The server's bytes are not an IMAP response this client can read (or are too long)."""


class Response(NamedTuple):
    """One server response: `tag` is "*" (untagged), "+" (continuation) or a command's tag;
    `text` the rest of the response with each literal replaced by its {size}; `literals` their
    bytes, in order."""

    tag: str
    text: str
    literals: tuple[bytes, ...] = ()

    @property
    def status(self) -> str:
        """OK, NO, BAD, BYE, PREAUTH, or (untagged) the keyword: CAPABILITY, SEARCH, EXISTS ..."""
        words = self.text.split(" ", 2)
        if words and words[0].isdigit():  # "* 3 EXISTS", "* 3 FETCH (...)"
            return words[1].upper() if len(words) > 1 else ""
        return words[0].upper() if words else ""

    @property
    def number(self) -> int | None:
        """The message number of "* 3 EXISTS" or "* 3 FETCH ..."."""
        head = self.text.split(" ", 1)[0]
        return int(head) if head.isascii() and head.isdigit() else None

    @property
    def detail(self) -> str:
        """What follows the status word: "[CODE ...] human text"."""
        parts = self.text.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def code(self) -> str | None:
        """The response code of a status response, e.g. "AUTHENTICATIONFAILED", "CAPABILITY IMAP4rev1 ..."."""
        found = _CODE_RE.match(self.detail)
        return found.group(1) if found else None

    def capabilities(self) -> frozenset[str] | None:
        """The capabilities an untagged CAPABILITY or a [CAPABILITY ...] code lists (upper case)."""
        if self.tag == "*" and self.status == "CAPABILITY":
            return frozenset(word.upper() for word in self.detail.split())
        code = self.code
        if code is not None and code.upper().startswith("CAPABILITY "):
            return frozenset(word.upper() for word in code.split()[1:])
        return None

    def search_uids(self) -> list[int]:
        """The numbers of an untagged SEARCH response."""
        if self.tag != "*" or self.status != "SEARCH":
            return []
        return [int(word) for word in self.detail.split() if word.isascii() and word.isdigit()]

    def fetch_uid(self) -> int | None:
        """The UID of an untagged FETCH response."""
        if self.tag != "*" or self.status != "FETCH":
            return None
        found = _UID_RE.search(self.text)
        return int(found.group(1)) if found else None

    def summary(self) -> str:
        """The response as one line of text, literals shown by their size."""
        return f"{self.tag} {self.text}"


class ResponseParser:
    """Bytes in, whole responses out (`feed`), with the bounds above."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._parts: list[bytes] = []  # the lines of the response so far (each ending in {n})
        self._literals: list[bytes] = []
        self._literal_size: int | None = None  # a literal of this many bytes comes next
        self._size = 0

    @property
    def buffered(self) -> bool:
        """Whether bytes of a response not yet complete are held."""
        return bool(self._buffer) or bool(self._parts)

    def feed(self, data: bytes) -> list[Response]:
        self._buffer += data
        out: list[Response] = []
        buffer = self._buffer
        while True:
            if self._literal_size is not None:
                if len(buffer) < self._literal_size:
                    return out
                self._literals.append(bytes(buffer[: self._literal_size]))
                del buffer[: self._literal_size]
                self._literal_size = None
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_LINE:
                    raise IMAPProtocolError(f"a response line longer than {MAX_LINE} bytes")
                return out
            if end > MAX_LINE:
                raise IMAPProtocolError(f"a response line longer than {MAX_LINE} bytes")
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            self._size += end + 2
            literal = _LITERAL_RE.search(line)
            self._parts.append(line)
            if literal is not None:
                size = int(literal.group(1))
                if size > MAX_LITERAL:
                    raise IMAPProtocolError(f"a literal of {size} bytes (at most {MAX_LITERAL})")
                self._size += size
                if self._size > MAX_RESPONSE:
                    raise IMAPProtocolError(f"a response longer than {MAX_RESPONSE} bytes")
                self._literal_size = size
                continue
            out.append(self._response())

    def _response(self) -> Response:
        text = b"".join(self._parts).decode("utf-8", "replace")
        literals = tuple(self._literals)
        self._parts.clear()
        self._literals.clear()
        self._size = 0
        tag, _, rest = text.partition(" ")
        if not tag:
            raise IMAPProtocolError(f"a response without a tag: {text[:80]!r}")
        return Response(tag, rest, literals)


def quoted(text: str) -> bytes:
    """An IMAP string argument: a quoted string when it can be one (ASCII, no CR/LF), else a
    literal, which the driver sends after the server's continuation (`split_literals`)."""
    data = text.encode("utf-8")
    if text.isascii() and "\r" not in text and "\n" not in text and "\0" not in text:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def split_literals(line: bytes) -> list[bytes]:
    """A command line cut after each synchronizing literal's announcement ("{n}\\r\\n"): the
    driver sends the next piece only after the server's "+" continuation."""
    pieces: list[bytes] = []
    rest = line
    while True:
        found = re.search(rb"\{(\d+)\}\r\n", rest)
        if found is None:
            pieces.append(rest)
            return pieces
        pieces.append(rest[: found.end()])
        rest = rest[found.end() :]
