"""`http_probe.allowed_targets`: which hosts and ports `/probe` may reach.

Each entry is a host pattern (`mx1.example.org`, `*.example.org`, `*`), an IP address or
CIDR (`192.0.2.0/24`, `2001:db8::/32`), either with an optional port (`*.example.org:587`,
`192.0.2.0/24:25`, `[2001:db8::/32]:25`), or only a port (`:25`, any host). Names are
matched as names and addresses as addresses: a name is never resolved here, so a pattern
`*.example.org` does not allow an IP literal and a CIDR does not allow a name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from smtp_exporter.config.durations import quote_value
from smtp_exporter.targets import IPAddress, Target, is_host_label, port_number

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One parsed entry. Exactly one of `name`, `network` is set, or neither (any host)."""

    name: str | None = None  # "mx1.example.org", or ".example.org" for "*.example.org", or "" for "*"
    network: _Network | None = None
    port: int | None = None  # None: any port

    def allows(self, host: str, ip: IPAddress | None, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        if self.name is None:
            return True
        if ip is not None:
            return False
        if self.name == "":
            return True
        if self.name.startswith("."):
            return host.endswith(self.name)
        return host == self.name


def _parse_port(text: str, entry: str) -> int:
    try:
        return port_number(text)
    except ValueError:
        raise ValueError(f"invalid port {quote_value(text)} in allowed target {quote_value(entry)}") from None


def _parse_network(text: str, entry: str) -> _Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid address or CIDR in allowed target {quote_value(entry)}: {exc}") from None


def _parse_name(text: str, entry: str) -> str:
    name = text.rstrip(".").lower()
    if name == "*":
        return ""
    wildcard = name.startswith("*.")
    labels = name[2:].split(".") if wildcard else name.split(".")
    if not all(is_host_label(label) for label in labels):
        raise ValueError(
            f"invalid allowed target {quote_value(entry)}: expected a host name, *.domain, an IP address or "
            "CIDR, optionally with :port, or :port alone"
        )
    return name[1:] if wildcard else name


def parse_allow_entry(entry: str) -> AllowRule:
    """Parse one `allowed_targets` entry; ValueError with a message naming it when invalid."""
    text = entry.strip()
    if not text or len(text) > 300:
        raise ValueError(f"invalid allowed target {quote_value(entry[:80])}")
    if text.startswith(":") and text.count(":") == 1:
        return AllowRule(port=_parse_port(text[1:], entry))
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(
                f"invalid allowed target {quote_value(entry)}: expected [IPv6 address or CIDR]:port"
            )
        network = _parse_network(inner, entry)
        if network.version != 6:
            raise ValueError(f"invalid allowed target {quote_value(entry)}: brackets are only for IPv6")
        return AllowRule(network=network, port=_parse_port(rest[1:], entry) if rest else None)
    if text.count(":") > 1:  # a bare IPv6 address or CIDR, no port
        return AllowRule(network=_parse_network(text, entry))
    host, sep, port_text = text.partition(":")
    port = _parse_port(port_text, entry) if sep else None
    if "/" in host or _is_ipv4(host):
        return AllowRule(network=_parse_network(host, entry), port=port)
    return AllowRule(name=_parse_name(host, entry), port=port)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


class TargetAllowlist:
    """The parsed `allowed_targets`. With no entries, everything is allowed (no restriction)."""

    __slots__ = ("_rules",)

    def __init__(self, entries: Iterable[str]) -> None:
        self._rules = tuple(parse_allow_entry(entry) for entry in entries)

    @property
    def restricted(self) -> bool:
        return bool(self._rules)

    def allows_target(self, target: Target) -> bool:
        """Whether /probe may connect to a parsed target."""
        if not self._rules:
            return True
        ip = ipaddress.ip_address(target.host) if target.family is not None else None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(rule.allows(target.host, ip, target.port) for rule in self._rules)

    def allows(self, host: str, port: int) -> bool:
        """Whether /probe may connect to `host` (a name or an IP literal, brackets optional) on
        `port`: for host names from elsewhere than a parsed target (a deployment's manifests)."""
        if not self._rules:
            return True
        text = host.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        ip: IPAddress | None
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return self.allows_target(Target(text.rstrip(".").lower(), port, None))
        return self.allows_target(Target(str(ip), port, ip.version))
