"""parse_ehlo: hostname and extensions from the EHLO reply, leniently."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_exporter.protocol.ehlo import MAX_EXTENSION_PARAMS, MAX_KEYWORD_CHARS, EhloResponse, parse_ehlo
from smtp_exporter.protocol.reply import Reply, ReplyParser


def ehlo(*lines: str) -> EhloResponse:
    return parse_ehlo(Reply(250, lines))


def test_hostname_and_extensions_in_order() -> None:
    (reply,) = ReplyParser().feed(
        b"250-mx.example.org Hello [192.0.2.1]\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
        b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
    )
    parsed = parse_ehlo(reply)
    assert parsed.hostname == "mx.example.org"
    assert parsed.extensions == (
        ("PIPELINING", ()),
        ("SIZE", ("10240000",)),
        ("STARTTLS", ()),
        ("AUTH", ("PLAIN", "LOGIN")),
        ("8BITMIME", ()),
    )


def test_size_parameter() -> None:
    assert dict(ehlo("mx", "SIZE 52428800").extensions)["SIZE"] == ("52428800",)
    assert dict(ehlo("mx", "SIZE").extensions)["SIZE"] == ()


def test_old_auth_equals_form() -> None:
    assert ehlo("mx", "AUTH=LOGIN PLAIN").extensions == (("AUTH", ("LOGIN", "PLAIN")),)
    assert ehlo("mx", "AUTH=").extensions == (("AUTH", ()),)


def test_duplicates_are_merged() -> None:
    parsed = ehlo("mx", "AUTH PLAIN LOGIN", "AUTH=LOGIN CRAM-MD5", "auth plain")
    assert parsed.extensions == (("AUTH", ("PLAIN", "LOGIN", "CRAM-MD5", "plain")),)


def test_keywords_are_upper_cased() -> None:
    assert ehlo("mx", "starttls", "x-Custom 1").extensions == (("STARTTLS", ()), ("X-CUSTOM", ("1",)))


def test_junk_keywords_are_skipped() -> None:
    parsed = ehlo(
        "mx",
        "",
        "   ",
        "-LEADING-DASH",
        "UNDER_SCORE",
        "ÜMLAUT",
        "K" * (MAX_KEYWORD_CHARS + 1),
        "=VALUE",
        'X-"QUOTED"',
        "X-BACK\\SLASH",
        "SMTPUTF8",
    )
    assert parsed.extensions == (("SMTPUTF8", ()),)


def test_parameters_are_bounded() -> None:
    params = " ".join(f"P{i}" for i in range(MAX_EXTENSION_PARAMS + 10))
    ((_, kept),) = ehlo("mx", f"X-MANY {params}").extensions
    assert len(kept) == MAX_EXTENSION_PARAMS


def test_hostname_only_and_empty_replies() -> None:
    assert ehlo("mx.example.org") == EhloResponse("mx.example.org", ())
    assert parse_ehlo(Reply(250, ())) == EhloResponse("", ())
    assert ehlo("") == EhloResponse("", ())
    assert len(ehlo("h" * 1000).hostname) == 255


_line = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.sampled_from(["AUTH", "=", " ", "-", "SIZE", "1", "é", "\t", "x", "AUTH=", '"', "\\"]), max_size=12
    ).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(code=st.integers(0, 999), lines=st.lists(_line, max_size=10))
def test_parse_ehlo_never_raises(code: int, lines: list[str]) -> None:
    parsed = parse_ehlo(Reply(code, tuple(lines)))
    keywords = [keyword for keyword, _ in parsed.extensions]
    assert len(keywords) == len(set(keywords))
    for keyword, params in parsed.extensions:
        # The ehlo-keyword grammar, which metrics/families.py relies on to put a keyword into
        # a label value as it is, unescaped.
        assert re.fullmatch(r"[A-Z0-9][A-Z0-9-]*", keyword) and len(keyword) <= MAX_KEYWORD_CHARS
        assert len(params) <= MAX_EXTENSION_PARAMS
