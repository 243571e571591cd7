"""TLS-RPT (RFC 8460 section 3): whether the mail domain publishes where to send TLS reports.

- The TXT record at `_smtp._tls.<domain>`: of its TXT records, those that do not begin
  `v=TLSRPTv1;` are discarded, and exactly one must remain ("If the number of resulting records
  is not one, senders MUST assume the recipient domain does not implement TLSRPT").
- Its fields: `*WSP ";" *WSP` between them, `rua=` required, a comma-separated list of URIs
  (commas, `!` and `;` inside one are percent-encoded), each `mailto:` (an address) or `https:`
  (a host); extensions `name=value` ignored if well-formed.
"""

from __future__ import annotations

import re
import urllib.parse

from smtp_exporter.metrics.posture import DNSSEC_SECURE, TLS_RPT_RECORD_VALID
from smtp_exporter.model import CheckReport
from smtp_exporter.posture.check import Check, CheckInput, sample
from smtp_exporter.posture.dns import Security, txt_texts

_PREFIX = "v=TLSRPTv1;"
_DELIM = re.compile(r"[ \t]*;[ \t]*")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_URI_SPLIT = re.compile(r"[ \t]*,[ \t]*")
MAX_URIS = 16
MAX_SHOWN = 64


class RecordError(ValueError):
    """Why senders would not report to this domain."""


def parse_records(texts: list[str]) -> tuple[str, ...]:
    """The `rua` URIs of the one TLS-RPT record among `texts`."""
    candidates = [text for text in texts if text.startswith(_PREFIX)]
    if not candidates:
        raise RecordError("no TXT record starting v=TLSRPTv1;")
    if len(candidates) > 1:
        raise RecordError(
            f"{len(candidates)} TXT records start v=TLSRPTv1; (exactly one is allowed, RFC 8460 section 3)"
        )
    return parse_record(candidates[0])


def parse_record(text: str) -> tuple[str, ...]:
    fields = _DELIM.split(text[len("v=TLSRPTv1") :])[1:]
    if fields and fields[-1] == "":
        fields.pop()
    uris: list[str] = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or not _EXT_NAME.fullmatch(name):
            raise RecordError(f"record syntax: bad field {field[:MAX_SHOWN]!r}")
        if name == "rua":
            uris += [_uri(uri) for uri in _URI_SPLIT.split(value)]
        elif not _EXT_VALUE.fullmatch(value):
            raise RecordError(f"record syntax: bad value of {name!r}")
    if not uris:
        raise RecordError("record has no rua= (where reports go)")
    return tuple(uris[:MAX_URIS])


def _uri(text: str) -> str:
    shown = repr(text[:MAX_SHOWN])
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "mailto":
        local, at, domain = urllib.parse.unquote(parts.path).rpartition("@")
        if not (local and at and domain) or " " in text:
            raise RecordError(f"rua {shown} is not a mailto: address")
    elif scheme == "https":
        if not parts.hostname or " " in text:
            raise RecordError(f"rua {shown} is not an https: URL with a host")
    else:
        raise RecordError(f"rua {shown} is neither mailto: nor https:")
    return text


async def run(given: CheckInput) -> CheckReport:
    name = f"_smtp._tls.{given.domain}"
    answer = await given.dns.lookup(name, "TXT")
    uris: tuple[str, ...] = ()
    if not answer.answered:
        reason = f"TLS-RPT record lookup failed: {answer.describe()}"
    else:
        try:
            uris = parse_records(txt_texts(answer))
        except RecordError as exc:
            reason = f"no valid TLS-RPT record at {name}: {exc}"
        else:
            reason = f"TLS-RPT record at {name}: reports go to {', '.join(uris)}"
    samples = [
        sample(TLS_RPT_RECORD_VALID, "", 1 if uris else 0),
        sample(DNSSEC_SECURE, 'record="tls_rpt"', 1 if answer.security is Security.SECURE else 0),
    ]
    details: tuple[tuple[str, object], ...] = (
        ("record_security", answer.security.value),
        ("rua", list(uris)),
        ("valid", bool(uris)),
    )
    return CheckReport("tls_rpt", given.now, tuple(samples), (reason,), details)


CHECK = Check("tls_rpt", run)
