from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_exporter.config.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1y", 31536000.0),
        ("1h1m1s1ms", 3661.001),
        ("90s", 90.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "10", "1.5s", "10x", "s", "1s1m", "-1s", "1 s", " 1s", "1S", "1s ", "\uff11s", "1mss"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_bare_number_hint() -> None:
    with pytest.raises(ValueError, match=r'^invalid duration "30": a unit is required, e.g. 30s$'):
        parse_duration("30")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (10, "10s"),
        (90, "1m30s"),
        (3600, "1h"),
        (86400 * 8, "1w1d"),
        (0.0004, "0s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10**13))
def test_round_trip_milliseconds(millis: int) -> None:
    text = format_duration(millis / 1000)
    assert round(parse_duration(text) * 1000) == millis


@given(st.text(max_size=30))
def test_parse_raises_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert seconds >= 0
