"""MTA-STS's texts (RFC 8461), parsed without I/O: the `_mta-sts` TXT record, the policy body and
the MX patterns' matching. The check (posture/mta_sts.py) fetches; this module only reads.

- Section 3.1: of the TXT records, those that do not begin `v=STSv1;` are discarded; exactly one
  must remain, with `id` of 1 to 32 letters and digits. The grammar is case-sensitive.
- Section 3.2: the policy is `key: value` lines (LF or CRLF); `version: STSv1`, `mode` one of
  enforce/testing/none, `max_age` 0 to 31557600 (1-10 digits), `mx` patterns (one or more unless
  the mode is none); unknown keys are ignored; of a repeated key other than `mx` the first counts.
- Section 3.2 / 4.1: an `mx` pattern is a host name (RFC 5321 Domain: an IP literal is not one),
  optionally `*.` before it; `*.` stands for exactly one leftmost label, and matching is of the
  whole name (anchored): `mx.example.com` does not match `mx.example.com.evil.net`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from smtp_exporter.targets import MAX_HOST_CHARS, is_host_label

MAX_AGE_LIMIT = 31557600  # section 3.2: about one year
MAX_PATTERNS = 64  # mx lines kept: a longer list is not a mail setup, and the report stays small

_RECORD_PREFIX = "v=STSv1;"
# sts-field-delim = *WSP ";" *WSP (section 3.1)
_DELIM = re.compile(r"[ \t]*;[ \t]*")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_POLICY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class PolicyError(ValueError):
    """A record or policy that senders must treat as absent; the message says why, in words."""


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    max_age: int
    mx: tuple[str, ...]  # lower case, `*.` kept


def parse_records(texts: list[str]) -> Record:
    """The one MTA-STS record among a name's TXT records (each its strings joined)."""
    candidates = [text for text in texts if text.startswith(_RECORD_PREFIX)]
    if not candidates:
        raise PolicyError("no TXT record starting v=STSv1;")
    if len(candidates) > 1:
        raise PolicyError(
            f"{len(candidates)} TXT records start v=STSv1; (exactly one is allowed, RFC 8461 section 3.1)"
        )
    return parse_record(candidates[0])


def parse_record(text: str) -> Record:
    """sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]"""
    rest = text[len("v=STSv1") :]
    fields = _DELIM.split(rest)
    # split of ";id=1;" gives ["", "id=1", ""]: the leading delimiter, then an optional trailing one
    if fields[0] != "":
        raise PolicyError("record syntax: expected ; after v=STSv1")
    fields = fields[1:]
    if fields and fields[-1] == "":
        fields = fields[:-1]
    if not fields:
        raise PolicyError("record has no id")
    ident: str | None = None
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or not _EXT_NAME.fullmatch(name):
            raise PolicyError(f"record syntax: bad field {_shown(field)}")
        if name == "id":
            if not _ID.fullmatch(value):
                raise PolicyError(f"record id {_shown(value)} is not 1 to 32 letters and digits")
            ident = ident or value
        elif not _EXT_VALUE.fullmatch(value):
            raise PolicyError(f"record syntax: bad value of {_shown(name)}")
    if ident is None:
        raise PolicyError("record has no id")
    return Record(ident, text)


def parse_policy(body: bytes) -> Policy:
    """The policy of a fetched body (section 3.2)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8 text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the last line's terminator is optional, so the split may end empty
    seen: dict[str, str] = {}
    mx: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        key, sep, value = line.partition(":")
        if not sep or not _POLICY_KEY.fullmatch(key):
            raise PolicyError(f"policy line {number}: not a key: value field")
        value = value.strip(" \t")
        if key == "mx":
            if len(mx) < MAX_PATTERNS:
                mx.append(_pattern(value, number))
        elif not value:
            raise PolicyError(f"policy line {number}: {key} has no value")
        else:
            seen.setdefault(key, value)
    for key in ("version", "mode", "max_age"):
        if key not in seen:
            raise PolicyError(f"policy has no {key}")
    if seen["version"] != "STSv1":
        raise PolicyError(f"policy version {_shown(seen['version'])} is not STSv1")
    try:
        mode = Mode(seen["mode"])
    except ValueError:
        raise PolicyError(f"policy mode {_shown(seen['mode'])} is not enforce, testing or none") from None
    if not _MAX_AGE.fullmatch(seen["max_age"]) or int(seen["max_age"]) > MAX_AGE_LIMIT:
        raise PolicyError(f"policy max_age {_shown(seen['max_age'])} is not 0 to {MAX_AGE_LIMIT} seconds")
    if not mx and mode is not Mode.NONE:
        raise PolicyError(f"policy in mode {mode.value} has no mx pattern")
    return Policy(mode, int(seen["max_age"]), tuple(mx))


def _pattern(value: str, number: int) -> str:
    name = value.lower()
    host = name.removeprefix("*.")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise PolicyError(f"policy line {number}: mx {_shown(value)} is an IP literal, not a host name")
    labels = host.split(".")
    if not host or len(host) > MAX_HOST_CHARS or not all(is_host_label(label) for label in labels):
        raise PolicyError(f"policy line {number}: mx {_shown(value)} is not a host name")
    return name


def matches(pattern: str, host: str) -> bool:
    """Whether the MX host name `host` (lower case, no trailing dot) matches the policy's
    `pattern` (section 4.1): the whole name, or `*.` and exactly one label more."""
    host = host.rstrip(".").lower()
    if pattern.startswith("*."):
        label, dot, parent = host.partition(".")
        return bool(label) and bool(dot) and parent == pattern[2:]
    return host == pattern


def covering(policy: Policy, host: str) -> str | None:
    """The first of the policy's patterns that matches `host`, if any."""
    return next((pattern for pattern in policy.mx if matches(pattern, host)), None)


def _shown(text: str) -> str:
    return repr(text[:64])
