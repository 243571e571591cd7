"""The MTA-STS grammar of RFC 8461 (posture/sts_policy.py, no I/O): records, policies, MX patterns.

The same rules run end to end against real servers in test_mta_sts.py; here every corner of the
grammar, which the servers there would only multiply."""

from __future__ import annotations

import pytest

from smtp_exporter.posture.sts_policy import (
    Mode,
    Policy,
    PolicyError,
    matches,
    parse_policy,
    parse_record,
    parse_records,
)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mx.example.com", "mx.example.com", True),
        ("mx.example.com", "MX.Example.COM.", True),  # DNS names compare without case, the root dot
        ("mx.example.com", "mx.example.com.evil.net", False),  # anchored at the end
        ("mx.example.com", "evilmx.example.com", False),  # and at the start
        ("mx.example.com", "a.mx.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "example.com", False),  # the wildcard is one label, not none
        ("*.example.com", "a.b.example.com", False),  # nor two
        ("*.example.com", "mx.example.com.evil.net", False),
        ("*.example.com", "mxexample.com", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert matches(pattern, host) is expected


def test_a_record() -> None:
    assert parse_record("v=STSv1; id=20261101T0000Z").id == "20261101T0000Z"
    assert parse_record("v=STSv1;id=abc;").id == "abc"  # no spaces, a trailing delimiter
    assert parse_record("v=STSv1;\tid=abc ;  ext_1=x.y").id == "abc"  # an extension is ignored
    assert parse_record("v=STSv1; id=first; id=second").id == "first"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v=STSv1;", "record has no id"),
        ("v=STSv1; ext=1", "record has no id"),
        ("v=STSv1; id=", "record id '' is not 1 to 32 letters and digits"),
        ("v=STSv1; id=2026-11-01", "record id '2026-11-01' is not 1 to 32 letters and digits"),
        (f"v=STSv1; id={'1' * 33}", f"record id '{'1' * 33}' is not 1 to 32 letters and digits"),
        ("v=STSv1; id=1; junk", "record syntax: bad field 'junk'"),
        ("v=STSv1; id=1; x=a b", "record syntax: bad value of 'x'"),
    ],
)
def test_bad_records(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_record(text)
    assert str(caught.value) == message


def test_only_records_starting_v_stsv1_count() -> None:
    assert parse_records(["v=spf1 -all", "v=STSv1; id=1", "v=STSv1x; id=2"]).id == "1"
    with pytest.raises(PolicyError, match="no TXT record starting v=STSv1;"):
        parse_records(["v=STSv1 ; id=1", "V=STSv1; id=1", "v=stsv1; id=1"])  # case and space matter
    with pytest.raises(PolicyError, match=r"2 TXT records start v=STSv1; \(exactly one"):
        parse_records(["v=STSv1; id=1", "v=STSv1; bad"])


def test_a_policy() -> None:
    body = b"version: STSv1\r\nmode: testing\r\nmx: MX1.example.com\r\nmx:\t*.example.net  \r\nmax_age: 86400"
    assert parse_policy(body) == Policy(Mode.TESTING, 86400, ("mx1.example.com", "*.example.net"))
    # Unknown keys are ignored; of a repeated key other than mx the first counts; LF alone ends a line.
    body = b"version: STSv1\nmode: enforce\nmode: none\nfoo: bar baz\nmx: a.example\nmax_age: 0\n"
    assert parse_policy(body) == Policy(Mode.ENFORCE, 0, ("a.example",))
    assert parse_policy(b"version: STSv1\nmode: none\nmax_age: 31557600\n") == Policy(Mode.NONE, 31557600, ())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"mode: enforce\nmx: a.example\nmax_age: 1\n", "policy has no version"),
        (
            b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
            "policy version 'STSv2' is not STSv1",
        ),
        (b"version: STSv1\nmx: a.example\nmax_age: 1\n", "policy has no mode"),
        (
            b"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
            "policy mode 'Enforce' is not enforce, testing or none",
        ),
        (b"version: STSv1\nmode: enforce\nmx: a.example\n", "policy has no max_age"),
        (
            b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
            "policy max_age '-1' is not 0 to 31557600 seconds",
        ),
        (
            b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
            "policy max_age '31557601' is not 0 to 31557600 seconds",
        ),
        (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "policy in mode enforce has no mx pattern"),
        (
            b"version: STSv1\nmode: enforce\nmx: [192.0.2.1]\nmax_age: 1\n",
            "policy line 3: mx '[192.0.2.1]' is an IP literal, not a host name",
        ),
        (
            b"version: STSv1\nmode: enforce\nmx: 2001:db8::25\nmax_age: 1\n",
            "policy line 3: mx '2001:db8::25' is an IP literal, not a host name",
        ),
        (
            b"version: STSv1\nmode: enforce\nmx: mx.example.com.\nmax_age: 1\n",
            "policy line 3: mx 'mx.example.com.' is not a host name",
        ),
        (
            b"version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 1\n",
            "policy line 3: mx '*.*.example.com' is not a host name",
        ),
        (b"version: STSv1\nmode enforce\n", "policy line 2: not a key: value field"),
        (b"version: STSv1\n\nmode: enforce\n", "policy line 2: not a key: value field"),
        (b"version: STSv1\nmode:\nmax_age: 1\n", "policy line 2: mode has no value"),
        (b"version: \xff\n", "policy is not UTF-8 text"),
    ],
)
def test_bad_policies(body: bytes, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(body)
    assert str(caught.value) == message
