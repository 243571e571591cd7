from __future__ import annotations

import pytest

from smtp_exporter.config.allowlist import TargetAllowlist, parse_allow_entry

ENTRIES = [
    "mx1.example.org",
    "*.example.net:587",
    "192.0.2.0/24",
    "[2001:db8::/32]:25",
    ":2525",
    "198.51.100.7:25",
    "2001:db8:ffff::1",
]


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("mx1.example.org", 25, True),
        ("MX1.Example.org.", 465, True),  # names are case-insensitive, trailing dot ignored
        ("mx2.example.org", 25, False),
        ("a.example.net", 587, True),
        ("a.b.example.net", 587, True),
        ("example.net", 587, False),  # *.domain does not match the domain itself
        ("a.example.net", 25, False),
        ("evilexample.net", 587, False),
        ("192.0.2.200", 1, True),
        ("::ffff:192.0.2.1", 25, True),  # IPv4-mapped IPv6 is the IPv4 address
        ("192.0.3.1", 25, False),
        ("2001:db8::1", 25, True),
        ("[2001:db8::1]", 25, True),
        ("2001:db8::1", 26, False),
        ("2001:db8:ffff::1", 9, True),
        ("anything.example.com", 2525, True),
        ("203.0.113.9", 2525, True),
        ("198.51.100.7", 25, True),
        ("198.51.100.7", 587, False),
    ],
)
def test_allows(host: str, port: int, allowed: bool) -> None:
    assert TargetAllowlist(ENTRIES).allows(host, port) is allowed


def test_names_and_addresses_never_cross() -> None:
    names_only = TargetAllowlist(["*"])
    assert names_only.allows("mx.example.org", 25)
    assert not names_only.allows("192.0.2.1", 25)
    addresses_only = TargetAllowlist(["0.0.0.0/0", "::/0", "::1"])
    assert addresses_only.allows("192.0.2.1", 25)
    assert addresses_only.allows("2001:db8::1", 25)
    assert not addresses_only.allows("localhost", 25)


def test_empty_allowlist_is_unrestricted() -> None:
    allowlist = TargetAllowlist([])
    assert not allowlist.restricted
    assert allowlist.allows("10.0.0.1", 22)
    assert TargetAllowlist([":25"]).restricted


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", 'invalid allowed target ""'),
        ("[192.0.2.1]:25", 'invalid allowed target "[192.0.2.1]:25": brackets are only for IPv6'),
        ("a..b", 'invalid allowed target "a..b": expected a host name'),
        ("*.*.example.org", 'invalid allowed target "*.*.example.org"'),
        ("mx.example.org:0", 'invalid port "0"'),
        (":x", 'invalid port "x"'),
        ("[::1", 'invalid allowed target "[::1": expected [IPv6 address or CIDR]:port'),
        ("192.0.2.1/24", "has host bits set"),
        ("300.1.1.1/8", 'invalid address or CIDR in allowed target "300.1.1.1/8"'),
    ],
)
def test_invalid_entries(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_allow_entry(entry)
    assert message in str(caught.value)
