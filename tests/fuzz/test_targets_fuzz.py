"""Fuzzing the target parser and the /probe allowlist: a Target or TargetError, a rule or
ValueError, never anything else; and what they accept means what it says."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smtp_exporter.config.allowlist import AllowRule, TargetAllowlist, parse_allow_entry
from smtp_exporter.targets import Target, TargetError, parse_target

FUZZ = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)

pieces = st.sampled_from(
    [
        "[",
        "]",
        ":",
        "::",
        ".",
        "-",
        "_",
        "*",
        "/",
        "%",
        "@",
        " ",
        "\n",
        "\x00",
        "\u0130",
        "\u00e9",
        "xn--",
        "127.0.0.1",
        "::1",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "mx1",
        "example",
        "org",
        "25",
        "0",
        "65536",
        "99999999999999999999",
        "+25",
        "-1",
        "\u0661\u0662",
        "a" * 64,
        "1e3",
        "0x19",
    ]
)
targetish = st.one_of(st.text(max_size=300), st.lists(pieces, max_size=12).map("".join))
ports = st.integers(min_value=-1, max_value=70000)


@FUZZ
@given(text=targetish, default_port=ports)
def test_parse_target_returns_a_target_or_raises_target_error(text: str, default_port: int) -> None:
    try:
        target = parse_target(text, default_port)
    except TargetError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert len(message) < 1024
        return
    assert isinstance(target, Target)
    assert isinstance(target.host, str) and target.host
    if "%" not in target.host:  # IPv6 zone IDs: see test_ipv6_zone_id_cannot_carry_control_characters
        assert target.host.isascii() and target.host.isprintable() and len(target.host) <= 253
    assert target.host == target.host.strip() and not target.host.endswith(".")
    if target.family is None:
        assert target.host == target.host.lower() and ":" not in target.host
    else:
        assert ipaddress.ip_address(target.host).version == target.family
    if 0 < default_port < 65536:  # module ports are validated by the config loader
        assert 0 < target.port < 65536
        # What the exporter prints as the target parses back to the same thing.
        assert parse_target(str(target), 1) == target


@FUZZ
@given(
    ip=st.ip_addresses(),
    port=st.integers(1, 65535),
)
def test_ip_targets_round_trip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert parse_target(text, 25) == Target(str(ip), port, ip.version)


entryish = st.one_of(
    st.text(max_size=80),
    st.lists(
        pieces | st.sampled_from(["/24", "/0", "/129", "*.", ":25", "10.0.0.0", "2001:db8::"]), max_size=8
    ).map("".join),
)


@FUZZ
@given(entry=entryish)
def test_allow_entry_is_a_rule_or_a_value_error(entry: str) -> None:
    try:
        rule = parse_allow_entry(entry)
    except ValueError as exc:
        assert str(exc) and len(str(exc)) < 1024
        return
    assert isinstance(rule, AllowRule)
    assert rule.port is None or 0 < rule.port < 65536
    assert not (rule.name is not None and rule.network is not None)


@FUZZ
@given(entries=st.lists(entryish, max_size=4), host=targetish, port=ports)
def test_allowlist_answers_any_host_without_raising(entries: list[str], host: str, port: int) -> None:
    valid = []
    for entry in entries:
        try:
            parse_allow_entry(entry)
        except ValueError:
            continue
        valid.append(entry)
    allowlist = TargetAllowlist(valid)
    assert allowlist.allows(host, port) in (True, False)
    if not valid:
        assert allowlist.allows(host, port)


@FUZZ
@given(
    network=st.ip_addresses().flatmap(
        lambda ip: st.integers(0, ip.max_prefixlen).map(
            lambda bits: ipaddress.ip_network(f"{ip}/{bits}", strict=False)
        )
    ),
    probe=st.ip_addresses(),
    port=st.integers(1, 65535),
)
def test_cidr_rules_allow_exactly_their_addresses(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
    probe: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
) -> None:
    entry = f"[{network}]:25" if network.version == 6 else f"{network}:25"
    allowlist = TargetAllowlist([entry])
    # An IPv4-mapped IPv6 address reaches the IPv4 address: rules see it as that address.
    seen = probe.ipv4_mapped if isinstance(probe, ipaddress.IPv6Address) and probe.ipv4_mapped else probe
    inside = seen.version == network.version and seen in network
    assert allowlist.allows(str(probe), 25) is inside
    assert allowlist.allows(str(probe), port) is (inside and port == 25)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)


@FUZZ
@given(
    domain=st.lists(labels, min_size=1, max_size=4).map(".".join),
    host=st.lists(labels, min_size=1, max_size=5).map(".".join),
)
def test_wildcard_rules_match_subdomains_only(domain: str, host: str) -> None:
    assume(len(host) <= 253)
    allowlist = TargetAllowlist([f"*.{domain}"])
    assert allowlist.allows(host, 25) is host.endswith("." + domain)
    assert allowlist.allows(host.upper() + ".", 25) is host.endswith("." + domain)
    # A name pattern never lets an address through, and vice versa (names are not resolved).
    assert not allowlist.allows("127.0.0.1", 25)
    assert not TargetAllowlist(["127.0.0.0/8"]).allows(host, 25)


@pytest.mark.parametrize(
    "text", ["[fe80::1%a\nb]:25", "[fe80::1%\x00]:25", "fe80::1%eth0 extra", "[fe80::1%\u00e9]:25"]
)
def test_ipv6_zone_id_cannot_carry_control_characters(text: str) -> None:
    try:
        target = parse_target(text, 25)
    except TargetError:
        return
    assert target.host.isascii() and target.host.isprintable() and " " not in target.host


@pytest.mark.parametrize(
    "text", [":\u00b2", "mx.example.org:\u0662\u0665", "fe80::1%eth0.", "127.0.0.1.", "1.2.3"]
)
def test_inputs_fuzzing_found_are_target_errors(text: str) -> None:
    """Non-ASCII digits as a port (int() would raise ValueError), a zone ending in a dot, and
    a name whose last label is all digits (a mistyped address, not a host name)."""
    with pytest.raises(TargetError):
        parse_target(text, 25)
