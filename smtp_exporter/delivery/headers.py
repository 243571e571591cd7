"""What the delivered message's headers say about its way: hops, the Received span and the
receiving side's Authentication-Results (RFC 8601, parsed by `authres`)."""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
from typing import NamedTuple

import authres

from smtp_exporter.protocol.message import TOKEN_HEADER, Token

MAX_RESULTS = 16  # methods kept per header: labels of a metric, so a hostile header is bounded
MAX_VALUE_CHARS = 64


class HeaderFacts(NamedTuple):
    hops: int  # the Received: headers
    received_span_seconds: float | None  # first (oldest) to last (newest), when both dates parse
    authentication_results: tuple[tuple[str, str], ...]  # method -> result, in header order


def read_headers(block: bytes, authserv_id: str | None) -> HeaderFacts:
    """The facts of a header block as fetched (BODY.PEEK[HEADER])."""
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    received = message.get_all("Received") or []
    times = [_received_time(str(value)) for value in received]
    span = None
    if len(times) >= 2 and times[0] is not None and times[-1] is not None:
        # Received headers are prepended: the first is the newest, the last the oldest.
        span = max(times[0] - times[-1], 0.0)
    return HeaderFacts(
        len(received), span, _results(message.get_all("Authentication-Results") or [], authserv_id)
    )


def _received_time(value: str) -> float | None:
    """The date after a Received header's last ";" (RFC 5322 3.6.7)."""
    _, semicolon, date = value.rpartition(";")
    if not semicolon:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(" ".join(date.split()))
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _results(values: list[str], authserv_id: str | None) -> tuple[tuple[str, str], ...]:
    """RFC 8601 section 5: only the headers the receiving boundary added count: those of
    `authserv_id` when it is set (every one of them), else the topmost header alone. A header
    that does not parse counts as none."""
    chosen = []
    for value in values:
        try:
            header = authres.AuthenticationResultsHeader.parse(
                "Authentication-Results: " + " ".join(value.split())
            )
        except (authres.AuthResError, ValueError, IndexError):
            if authserv_id is None:
                return ()
            continue
        if authserv_id is None:
            chosen = [header]
            break
        if str(header.authserv_id).lower() == authserv_id.lower():
            chosen.append(header)
    results: dict[str, str] = {}
    for header in chosen:
        for result in header.results:
            method = str(result.method).lower()[:MAX_VALUE_CHARS]
            if method not in results and len(results) < MAX_RESULTS:
                results[method] = str(result.result).lower()[:MAX_VALUE_CHARS]
    return tuple(results.items())


def read_token(block: bytes) -> Token | None:
    """The token of a fetched header block holding X-SMTP-Exporter-Probe (HEADER.FIELDS)."""
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    value = message.get(TOKEN_HEADER)
    return None if value is None else Token.parse(" ".join(str(value).split()))
