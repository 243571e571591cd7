"""The EHLO reply (RFC 5321 4.1.1.1): the server's name and its service extensions."""

from __future__ import annotations

from typing import NamedTuple

from smtp_exporter.memo import remember
from smtp_exporter.protocol.reply import Reply

MAX_EXTENSION_PARAMS = 32
MAX_KEYWORD_CHARS = 64


class EhloResponse(NamedTuple):
    hostname: str
    # Keyword (upper case) -> parameters, in the order offered; duplicates merged.
    extensions: tuple[tuple[str, tuple[str, ...]], ...]


# EHLO replies already read, by their lines: a server answers the same at every probe, and
# reading one (9 lines) costs about 60,000 instructions, finding it here about 2,000.
_PARSED: dict[tuple[str, ...], EhloResponse] = {}
MAX_REMEMBERED_REPLIES = 1024
MAX_REMEMBERED_REPLY_CHARS = 2048  # so a hostile server can pin at most ~2 MB here


def parse_ehlo(reply: Reply) -> EhloResponse:
    """Read the hostname and the extensions from a 250 EHLO reply.

    Lenient on purpose: a keyword that is not valid is skipped rather than failing the
    probe, and the old `AUTH=LOGIN PLAIN` form is read as `AUTH LOGIN PLAIN`.
    """
    lines = reply.lines
    parsed = _PARSED.get(lines)
    if parsed is None:
        parsed = _parse(lines)
        if sum(map(len, lines)) <= MAX_REMEMBERED_REPLY_CHARS:
            remember(_PARSED, lines, parsed, limit=MAX_REMEMBERED_REPLIES)
    return parsed


def _parse(lines: tuple[str, ...]) -> EhloResponse:
    first = lines[0] if lines else ""
    hostname = first.split(" ", 1)[0][:255]
    merged: dict[str, list[str]] = {}
    for line in lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword = words[0]
        params = words[1:]
        if "=" in keyword:
            keyword, _, extra = keyword.partition("=")
            params = ([extra] if extra else []) + params
        keyword = keyword.upper()
        # RFC 5321 ehlo-keyword: (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        if (
            len(keyword) > MAX_KEYWORD_CHARS
            or not keyword.isascii()
            or not keyword[:1].isalnum()
            or not keyword.replace("-", "").isalnum()
        ):
            continue
        known = merged.setdefault(keyword, [])
        for param in params:
            if param not in known and len(known) < MAX_EXTENSION_PARAMS:
                known.append(param)
    return EhloResponse(hostname, tuple((k, tuple(v)) for k, v in merged.items()))
