"""Durations in Prometheus' syntax: `500ms`, `10s`, `1m30s`, `1h`, `1d`, `1w`, `1y`.

Units must appear largest first, each at most once, with integer amounts; a bare number
is refused (except `0`) so that `timeout: 10` cannot silently mean ten seconds or ten
milliseconds.
"""

from __future__ import annotations

import math
import re

_UNITS: tuple[tuple[str, float], ...] = (
    ("y", 365 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)

_DURATION_RE = re.compile(
    r"(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?",
    re.ASCII,
)
_MAX_TEXT = 64
_MAX_QUOTED = 100


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with a message naming the value when it is not a duration."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(text) if len(text) <= _MAX_TEXT else None
    if match is None or not any(match.groups()):
        if text.isascii() and text.isdigit():
            raise ValueError(f"invalid duration {quote_value(text)}: a unit is required, e.g. {text}s")
        raise ValueError(
            f"invalid duration {quote_value(text)}: expected integers with units ms, s, m, h, d, w, y, "
            "largest first, e.g. 500ms, 10s, 1m30s"
        )
    return sum(int(match[unit]) * scale for unit, scale in _UNITS if match[unit] is not None)


def format_duration(seconds: float) -> str:
    """The Prometheus spelling of `seconds`, rounded to the millisecond: 90.0 -> `1m30s`."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"cannot format duration {seconds!r}")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, scale in _UNITS:
        unit_ms = round(scale * 1000)
        amount, millis = divmod(millis, unit_ms)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def quote_value(text: str) -> str:
    """`text` in double quotes (as config error messages show values) with anything unprintable escaped, so messages stay on one line."""
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED] + "..."
    escaped = "".join(
        ch if ch.isprintable() and ch not in '"\\' else ("\\" + ch if ch in '"\\' else repr(ch)[1:-1])
        for ch in text
    )
    return f'"{escaped}"'
