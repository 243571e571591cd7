"""Host, port and name parsing: probe targets, ports, host names and nameservers.

The one place these are parsed: the config loader (targets, nameservers, `allowed_targets`),
`/probe`, the `probe` command, the resolver and the listen addresses all use it. Each parser
raises `ValueError` (a `TargetError` for targets) with a message naming what it was given.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from smtp_exporter.config.durations import quote_value

MAX_HOST_CHARS = 253

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetError(ValueError):
    """A target string that cannot be probed."""


class Target(NamedTuple):
    host: str  # a DNS name (lower case, no trailing dot) or an IP literal without brackets
    port: int
    # 4 or 6 when host is an IP literal (its address is `ipaddress.ip_address(host)`), else None:
    # the version alone, since an address object would cost every target 80 bytes.
    family: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family == 6 else self.host
        return f"{host}:{self.port}"


def port_number(text: str, *, low: int = 1) -> int:
    """A port written in decimal ASCII digits, from `low` to 65535; ValueError otherwise."""
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def is_host_label(label: str) -> bool:
    """One dot-separated label of a host name: 1-63 letters, digits, - or _, no - at either end."""
    return (
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
    )


def _check_zone(ip: ipaddress.IPv6Address, target: str) -> None:
    """An IPv6 zone (fe80::1%eth0) must look like an interface name: it ends up in messages."""
    zone = ip.scope_id
    if zone is not None and not (
        0 < len(zone) <= 15
        and zone.isascii()
        and all(c.isalnum() or c in "_.-" for c in zone)
        and not zone.endswith(".")
    ):
        raise TargetError(f"invalid IPv6 zone in target {target[:80]!r}")


def _target_port(text: str, target: str) -> int:
    try:
        return port_number(text)
    except ValueError:
        raise TargetError(f"invalid port {text!r} in target {target!r}") from None


def _hostname(host: str, target: str) -> str:
    name = host.rstrip(".").lower()
    if not name or len(name) > MAX_HOST_CHARS:
        raise TargetError(f"invalid host in target {target!r}")
    if not all(is_host_label(label) for label in name.split(".")):
        raise TargetError(f"invalid host name in target {target!r}")
    if name.rpartition(".")[2].isdigit():  # no top-level domain is all digits: a mistyped address
        raise TargetError(f"invalid host in target {target!r}: neither an IP address nor a host name")
    return name


def parse_target(text: str, default_port: int) -> Target:
    """`host`, `host:port`, `[ipv6]:port` or an IP literal; `default_port` when none is written."""
    target = text.strip()
    if not target or len(target) > MAX_HOST_CHARS + 8:
        raise TargetError(f"invalid target {text[:80]!r}")
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep:
            raise TargetError(f"missing ']' in target {target!r}")
        if rest and not rest.startswith(":"):
            raise TargetError(f"unexpected text after ']' in target {target!r}")
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise TargetError(f"invalid IPv6 address in target {target!r}") from exc
        _check_zone(ip, target)
        port = _target_port(rest[1:], target) if rest else default_port
        return Target(str(ip), port, 6)
    if target.count(":") > 1:  # a bare IPv6 literal, no port
        try:
            ip6 = ipaddress.IPv6Address(target)
        except ValueError as exc:
            raise TargetError(f"invalid target {target!r} (write IPv6 with a port as [addr]:port)") from exc
        _check_zone(ip6, target)
        return Target(str(ip6), default_port, 6)
    host, sep, port_text = target.partition(":")
    port = _target_port(port_text, target) if sep else default_port
    try:
        ip4 = ipaddress.IPv4Address(host)
    except ValueError:
        return Target(_hostname(host, target), port, None)
    return Target(str(ip4), port, 4)


def parse_nameserver(text: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[ipv6]:port` -> (ip, port), port 53 when none is written."""
    entry = text.strip()
    host, port = entry, ""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if not rest.startswith(":"):
            host = ""
        port = rest[1:]
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    try:
        address = ipaddress.ip_address(host)
        if entry.startswith("[") and address.version != 6:
            raise ValueError(host)
    except ValueError:
        raise ValueError(
            f"invalid nameserver {quote_value(entry)}: expected an IP address, IP:port or [IPv6]:port"
        ) from None
    try:
        return str(address), port_number(port) if port else 53
    except ValueError:
        raise ValueError(f"invalid port in nameserver {quote_value(entry)}") from None


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`host:port`, `[ipv6]:port` or `:port` (all interfaces) -> (host or None, port); port 0
    lets the system choose."""
    host, sep, port_text = text.rpartition(":")
    try:
        if not sep:
            raise ValueError(text)
        port = port_number(port_text, low=0)
    except ValueError:
        raise ValueError(
            f"invalid listen address {text!r} (expected host:port, [ipv6]:port or :port)"
        ) from None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid listen address {text!r} (write IPv6 addresses as [addr]:port)")
    return (host or None, port)
