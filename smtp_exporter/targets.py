"""Probe targets: `host`, `host:port`, `[ipv6]:port` or an IP literal."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

MAX_HOST_CHARS = 253


class TargetError(ValueError):
    """A target string that cannot be probed."""


class Target(NamedTuple):
    host: str  # a DNS name (lower case, no trailing dot) or an IP literal without brackets
    port: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # set when host is an IP literal

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.ip is not None and self.ip.version == 6 else self.host
        return f"{host}:{self.port}"


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


def _port(text: str, target: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise TargetError(f"invalid port {text!r} in target {target!r}")
    return int(text)


def _hostname(host: str, target: str) -> str:
    name = host.rstrip(".").lower()
    if not name or len(name) > MAX_HOST_CHARS:
        raise TargetError(f"invalid host in target {target!r}")
    for label in name.split("."):
        if not 0 < len(label) <= 63 or label.startswith("-") or label.endswith("-"):
            raise TargetError(f"invalid host name in target {target!r}")
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            raise TargetError(f"invalid host name in target {target!r}")
    if name.rpartition(".")[2].isdigit():  # no top-level domain is all digits: a mistyped address
        raise TargetError(f"invalid host in target {target!r}: neither an IP address nor a host name")
    return name


def parse_target(text: str, default_port: int) -> Target:
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
        port = _port(rest[1:], target) if rest else default_port
        return Target(str(ip), port, ip)
    if target.count(":") > 1:  # a bare IPv6 literal, no port
        try:
            ip6 = ipaddress.IPv6Address(target)
        except ValueError as exc:
            raise TargetError(f"invalid target {target!r} (write IPv6 with a port as [addr]:port)") from exc
        _check_zone(ip6, target)
        return Target(str(ip6), default_port, ip6)
    host, sep, port_text = target.partition(":")
    port = _port(port_text, target) if sep else default_port
    try:
        ip4 = ipaddress.IPv4Address(host)
    except ValueError:
        return Target(_hostname(host, target), port, None)
    return Target(str(ip4), port, ip4)
