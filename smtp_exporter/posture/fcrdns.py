"""Forward-confirmed reverse DNS of the address the probe connected to.

- `smtp_fcrdns_match`: the address has a PTR record, and one of its PTR names resolves (A for
  IPv4, AAAA for IPv6) back to that same address. Receivers check this of a sending MTA (Postfix's
  reject_unknown_client_hostname, most spam filters' scores); an MX that also sends mail is
  judged on it. A failed lookup (bogus, SERVFAIL, timeout) is 0 as well: the name is not
  confirmed, and such receivers defer the mail (the reason tells the two apart).
- `smtp_fcrdns_banner_name_match`: a PTR name equals the host name in the banner or in the EHLO
  reply (RFC 5321 sections 4.2 and 4.1.1.1: the greeting's and the reply's domain is the server's
  own; compared without case or trailing dot). Advice only: RFC 5321 section 4.1.4 forbids
  refusing mail because these names differ, so a mismatch is tidiness, not delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress

from smtp_exporter.metrics.posture import FCRDNS_BANNER_NAME_MATCH, FCRDNS_MATCH
from smtp_exporter.model import CheckReport, ProbeResult
from smtp_exporter.posture.check import Check, CheckInput, sample
from smtp_exporter.posture.dns import Lookup

MAX_PTR_NAMES = 10  # PTR names looked up forward: a hostile reverse zone cannot fan this out
MAX_NAME_CHARS = 256


def server_names(result: ProbeResult) -> dict[str, str]:
    """The host names the server gave itself: the banner's first word and the EHLO reply's."""
    names: dict[str, str] = {}
    banner = result.server.banner
    if banner and banner.split():
        names["banner"] = _normal(banner.split()[0])
    if result.server.ehlo_hostname:
        names["ehlo"] = _normal(result.server.ehlo_hostname)
    return names


def _normal(name: str) -> str:
    return name[:MAX_NAME_CHARS].rstrip(".").lower()


async def run(given: CheckInput) -> CheckReport:
    connected = given.result.address
    if connected is None:
        reason = "the probe connected to no address: nothing to check"
        return CheckReport("fcrdns", given.now, (), (reason,), (("address", None),))
    address = ipaddress.ip_address(connected.ip)
    rdtype = "A" if address.version == 4 else "AAAA"
    ptr = await given.dns.lookup(address.reverse_pointer, "PTR")
    names = [_normal(r.target.to_text()) for r in ptr.records][:MAX_PTR_NAMES]  # type: ignore[attr-defined]
    forward = await asyncio.gather(*(given.dns.lookup(name, rdtype) for name in names))
    confirmed = [
        name
        for name, lookup in zip(names, forward, strict=True)
        if any(ipaddress.ip_address(r.address) == address for r in lookup.records)  # type: ignore[attr-defined]
    ]
    reasons = [_verdict(str(address), ptr, names, forward, confirmed, rdtype)]
    own = server_names(given.result)
    matching = sorted({kind for kind, name in own.items() if name in names})
    if not names:
        reasons.append("no PTR name to compare with the banner or EHLO host name")
    elif matching:
        reasons.append(f"the PTR name is the {' and '.join(matching)} host name")
    else:
        given_names = ", ".join(f"{kind} {name}" for kind, name in own.items()) or "no host name"
        reasons.append(
            f"no PTR name ({', '.join(names)}) equals the server's own ({given_names}): advice only, "
            "RFC 5321 section 4.1.4 forbids refusing mail for it"
        )
    samples = (
        sample(FCRDNS_MATCH, "", 1 if confirmed else 0),
        sample(FCRDNS_BANNER_NAME_MATCH, "", 1 if matching else 0),
    )
    details: tuple[tuple[str, object], ...] = (
        ("address", str(address)),
        ("ptr_security", ptr.security.value),
        ("ptr_names", names),
        ("confirmed_names", confirmed),
        ("server_names", own),
        ("banner_name_matches", matching),
    )
    return CheckReport("fcrdns", given.now, samples, tuple(reasons), details)


def _verdict(
    address: str, ptr: Lookup, names: list[str], forward: list[Lookup], confirmed: list[str], rdtype: str
) -> str:
    if not ptr.answered:
        return f"{address}: PTR lookup failed ({ptr.describe()}): not confirmed"
    if not names:
        what = "NXDOMAIN" if ptr.nxdomain else "no PTR record"
        return f"{address} has no PTR record ({what}): not confirmed"
    if confirmed:
        return f"{address} has PTR {confirmed[0]}, which resolves back to it: confirmed"
    failed = [lookup.describe() for lookup in forward if not lookup.answered]
    if failed:
        return f"{address}: forward lookup failed ({'; '.join(failed)}): not confirmed"
    found = "; ".join(_forward(name, lookup, rdtype) for name, lookup in zip(names, forward, strict=True))
    return f"{address} has PTR {', '.join(names)}, none resolving back to it ({found}): not confirmed"


def _forward(name: str, lookup: Lookup, rdtype: str) -> str:
    if lookup.nxdomain:
        return f"{name} does not exist"
    addresses = [str(r.address) for r in lookup.records]  # type: ignore[attr-defined]
    return f"{name} {rdtype} {', '.join(addresses)}" if addresses else f"{name} has no {rdtype} record"


CHECK = Check("fcrdns", run)
