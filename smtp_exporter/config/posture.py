"""A module's `posture` section: which mail-security checks run beside its conversation.

Every key of the contract is read and validated here; every check of `CHECKS` is implemented
in `smtp_exporter.posture` (one of the contract still to come was refused when enabled, rather
than loaded and silently skipped, until it arrived).

The cross-checks against the rest of the module (`mx: true`, TLS) are `check_posture`'s, called
from the module's post-validation hook.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl

import yaml

from smtp_exporter.config.durations import quote_value
from smtp_exporter.config.files import readable_file
from smtp_exporter.config.nodes import (
    Document,
    Parser,
    boolean,
    duration_upto,
    join,
    section,
    sequence,
    string,
)
from smtp_exporter.config.schema import DNSBLConfig, ModuleConfig, PostureConfig, StartTLS
from smtp_exporter.targets import MAX_HOST_CHARS, is_host_label

MAX_POSTURE_INTERVAL = 365 * 86400.0
MAX_DNSBL_ZONES = 16
MAX_DNSBL_ADDRESSES = 64

# The checks of the contract (the `check` label values).
CHECKS = ("dane", "mta_sts", "tls_rpt", "fcrdns", "dnsbl", "mx_hygiene")
# The checks about the mail domain: they need the target to be one (mx: true).
_NEED_MX = ("mta_sts", "tls_rpt", "mx_hygiene")


def _zones(doc: Document, node: yaml.Node, path: str) -> tuple[str, ...]:
    items = sequence(doc, node, path, single=True)
    if not items:
        doc.fail(node, path, "must name at least one zone")
    if len(items) > MAX_DNSBL_ZONES:
        doc.fail(node, path, f"at most {MAX_DNSBL_ZONES} zones")
    zones: list[str] = []
    for item_path, item in items:
        text = string(doc, item, item_path).strip()
        zone = text.rstrip(".").lower()
        if not zone or len(zone) > MAX_HOST_CHARS or not all(is_host_label(x) for x in zone.split(".")):
            doc.fail(item, item_path, f"invalid zone {quote_value(text)}: must be a DNS name")
        if zone not in zones:
            zones.append(zone)
    return tuple(zones)


def _addresses(doc: Document, node: yaml.Node, path: str) -> tuple[str, ...]:
    items = sequence(doc, node, path, single=True)
    if len(items) > MAX_DNSBL_ADDRESSES:
        doc.fail(node, path, f"at most {MAX_DNSBL_ADDRESSES} addresses")
    addresses: list[str] = []
    for item_path, item in items:
        text = string(doc, item, item_path).strip()
        try:
            address = str(ipaddress.ip_address(text))
        except ValueError:
            doc.fail(item, item_path, f"invalid value {quote_value(text)}: must be an IPv4 or IPv6 address")
        if address not in addresses:
            addresses.append(address)
    return tuple(addresses)


def _check_dnsbl(doc: Document, dnsbl: DNSBLConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if not dnsbl.zones:
        doc.fail(keys.get("addresses"), path, 'missing required key "zones"')


_DNSBL: dict[str, Parser] = {"zones": _zones, "addresses": _addresses}
assert set(_DNSBL) == {field.name for field in dataclasses.fields(DNSBLConfig)}


def _dnsbl(doc: Document, node: yaml.Node, path: str) -> DNSBLConfig:
    return section(doc, node, path, DNSBLConfig(), _DNSBL, _check_dnsbl)


def _ca_file(doc: Document, node: yaml.Node, path: str) -> str:
    """A CA bundle, loaded once here so that a file that is not one fails on its line."""
    name = readable_file(doc, node, path)
    try:
        ssl.create_default_context().load_verify_locations(cafile=name)
    except (ssl.SSLError, OSError, ValueError) as exc:
        doc.fail(node, path, f"cannot load CA file {quote_value(name)}: {exc}")
    return name


_POSTURE: dict[str, Parser] = {
    "interval": duration_upto(MAX_POSTURE_INTERVAL),
    "dane": boolean,
    "mta_sts": boolean,
    "tls_rpt": boolean,
    "fcrdns": boolean,
    "dnsbl": _dnsbl,
    "mx_hygiene": boolean,
    "ca_file": _ca_file,
}
assert set(_POSTURE) == {field.name for field in dataclasses.fields(PostureConfig)}


def parse_posture(doc: Document, node: yaml.Node, path: str) -> PostureConfig:
    posture = section(doc, node, path, PostureConfig(), _POSTURE)
    if not any(check_enabled(posture, name) for name in CHECKS):
        doc.fail(node, path, "enables no check")
    return posture


def check_enabled(posture: PostureConfig, name: str) -> bool:
    value = getattr(posture, name)
    return value is not None and value is not False


def check_posture(doc: Document, module: ModuleConfig, keys: dict[str, yaml.Node], path: str) -> None:
    """The posture section against the rest of the module (`keys`: the module's key nodes)."""
    posture = module.posture
    if posture is None:
        return
    where = join(path, "posture")
    for name in _NEED_MX:
        if check_enabled(posture, name) and not module.mx:
            doc.fail(
                keys["posture"], join(where, name), "needs mx: true (the target must be the mail domain)"
            )
    if posture.dane and not (module.implicit_tls or module.starttls is StartTLS.REQUIRED):
        doc.fail(
            keys["posture"],
            join(where, "dane"),
            "needs starttls: required or implicit_tls: true (DANE is about the TLS the server presents)",
        )
