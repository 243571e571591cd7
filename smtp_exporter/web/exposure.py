"""Whether `/probe` is open to the network: an unrestricted `/probe` (no
`http_probe.allowed_targets`, no basic auth) on an address other hosts can reach lets anyone
there make the exporter open SMTP connections anywhere, so the service says so in its log.

Loopback listen addresses (a sidecar, or behind a local proxy) are not exposed. A host name
other than `localhost` may resolve to anything, so it counts as reachable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from smtp_exporter.config.allowlist import TargetAllowlist
from smtp_exporter.config.web import WebConfig
from smtp_exporter.targets import parse_listen_address

UNRESTRICTED_PROBE_WARNING = (
    "/probe is unrestricted and reachable from the network: anyone who can reach it can make this "
    "exporter connect to any host and port; set http_probe.allowed_targets in the config file, "
    "basic auth in --web.config.file, or listen on a loopback address"
)


def is_loopback(host: str | None) -> bool:
    """Whether a listen host (None: all interfaces) accepts connections from this machine only."""
    if host is None:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposed_addresses(
    listen_addresses: Iterable[str], allowlist: TargetAllowlist, web_config: WebConfig
) -> tuple[str, ...]:
    """The listen addresses on which other hosts reach an unrestricted `/probe` (empty: none)."""
    if allowlist.restricted or web_config.auth_required:
        return ()
    return tuple(address for address in listen_addresses if not is_loopback(parse_listen_address(address)[0]))
