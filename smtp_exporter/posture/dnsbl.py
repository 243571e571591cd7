"""DNS blocklists: whether the addresses the probe connected to (plus `dnsbl.addresses`, e.g.
outbound relays) are listed in each configured zone, by RFC 5782 and Spamhaus' return codes.

- The addresses the probe connected to: the result's, then every other one its attempts reached
  (a TCP connection, whether or not the greeting or EHLO then moved the probe on): under
  failover or `ip_protocol: both` one result holds several, and each is a host of the domain.

- RFC 5782 section 2.1: an IPv4 address is looked up as its octets reversed under the zone
  (192.0.2.99 in zen.example: `99.2.0.192.zen.example`), an A query; section 2.4: an IPv6
  address as its 32 nibbles reversed, as in ip6.arpa. NXDOMAIN (or no A record) is "not listed".
- An A answer in 127.0.0.2-127.0.0.255 is a listing, its last octet the list's return code
  (Spamhaus zen: 2 SBL, 3 CSS, 4-7 XBL, 9 DROP, 10-11 PBL; the lowest when there are several),
  with the TXT record at the same name as the reason (section 2.1).
- Never a listing: Spamhaus' error answers 127.255.255.252 (a typo in the zone name),
  127.255.255.254 (query through a public or open resolver, refused) and 127.255.255.255 (too
  many queries), any other 127/8 value, and any answer outside 127.0.0.0/8 (a resolver that
  rewrites NXDOMAIN, or a zone that expired and now wildcards everything). Tools that count these
  as listings page people for their resolver's fault. They are `error`s, as are failed lookups;
  the return code of a Spamhaus error answer is its last octet (252, 254, 255), of the others 0.
- RFC 5782 section 5: a zone MUST list 127.0.0.2 and MUST NOT list 127.0.0.1. A zone failing
  that test (checked at every run, beside the addresses) is `zone_unhealthy` for every address:
  what it says about them is not trusted, neither a listing nor its absence.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from smtp_exporter.metrics.posture import DNSBL_LISTED, DNSBL_RETURN_CODE, DNSBL_STATE
from smtp_exporter.model import AttemptOutcome, CheckReport, Phase, ProbeResult
from smtp_exporter.posture.check import Check, CheckInput, sample
from smtp_exporter.posture.dns import Lookup, PostureDNS, txt_texts

# The `state` label values: one series each per zone and address, 1 for the current one.
STATES = ("listed", "not_listed", "error", "zone_unhealthy")
# Spamhaus' documented answers that report a refused or broken query, not a listing.
ERROR_CODES = {
    ipaddress.IPv4Address("127.255.255.252"): "typing error in the DNSBL name",
    ipaddress.IPv4Address("127.255.255.254"): "query refused: sent through a public or open resolver",
    ipaddress.IPv4Address("127.255.255.255"): "query refused: excessive number of queries",
}
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
LISTED_FIRST = ipaddress.IPv4Address("127.0.0.2")
LISTED_LAST = ipaddress.IPv4Address("127.0.0.255")
TEST_LISTED = "127.0.0.2"  # RFC 5782 section 5: every IPv4 zone lists it ...
TEST_NOT_LISTED = "127.0.0.1"  # ... and none lists this one
MAX_CONCURRENT = 16  # lookups in flight per run (zones x addresses can reach a thousand)
MAX_TXT_CHARS = 300


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one zone said about one address."""

    state: str  # listed, not_listed or error (zone_unhealthy is decided per zone, afterwards)
    code: int  # the lowest listing code, or a Spamhaus error answer's last octet; else 0
    answers: tuple[str, ...]  # the A records, as given
    reason: str  # in words: "listed with 127.0.0.4: <TXT>", "not listed (NXDOMAIN)", ...


def query_name(address: str, zone: str) -> str:
    """The name RFC 5782 sections 2.1 and 2.4 look `address` up at: reversed octets or nibbles."""
    pointer = ipaddress.ip_address(address).reverse_pointer  # "...in-addr.arpa" / "...ip6.arpa"
    return pointer.rsplit(".", 2)[0] + "." + zone


def checked_addresses(result: ProbeResult, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses the probe connected to (normalized, the result's first), then the configured
    ones (normalized at load), no repeats."""
    reached = [result.address.ip] if result.address is not None else []
    reached += [
        attempt.address
        for attempt in result.attempts
        if attempt.outcome is AttemptOutcome.CONNECTED
        or (attempt.outcome is AttemptOutcome.FAILED and attempt.phase not in (None, Phase.CONNECT))
    ]
    addresses = [str(ipaddress.ip_address(address)) for address in reached]
    return tuple(dict.fromkeys([*addresses, *extra]))


async def run(given: CheckInput) -> CheckReport:
    dnsbl = given.config.dnsbl
    assert dnsbl is not None  # the runner runs only the enabled checks
    addresses = checked_addresses(given.result, dnsbl.addresses)
    limit = asyncio.Semaphore(MAX_CONCURRENT)
    zones = await asyncio.gather(*(_zone(given.dns, limit, zone, addresses) for zone in dnsbl.zones))
    samples = []
    reasons: list[str] = []
    details: list[dict[str, object]] = []
    if not addresses:
        reasons.append("no address to check: the probe connected nowhere and dnsbl.addresses is empty")
    for zone, (health, verdicts) in zip(dnsbl.zones, zones, strict=True):
        if health is not None:
            reasons.append(f"zone {zone} is unhealthy, its answers are not trusted: {health}")
        results = []
        for address, verdict in zip(addresses, verdicts, strict=True):
            state = "zone_unhealthy" if health is not None else verdict.state
            labels = f'zone="{zone}",address="{address}"'
            samples.append(sample(DNSBL_LISTED, labels, 1 if state == "listed" else 0))
            samples += [sample(DNSBL_STATE, f'{labels},state="{s}"', 1 if s == state else 0) for s in STATES]
            # An unhealthy zone's code is not trusted either: 0, as for no listing.
            code = verdict.code if health is None else 0
            samples.append(sample(DNSBL_RETURN_CODE, labels, code))
            if health is None:
                reasons.append(f"{address} in {zone}: {verdict.reason}")
            results.append(
                {
                    "address": address,
                    "state": state,
                    "return_code": code,
                    "answers": list(verdict.answers),
                    "reason": verdict.reason,
                }
            )
        details.append({"zone": zone, "healthy": health is None, "health": health, "addresses": results})
    return CheckReport("dnsbl", given.now, tuple(samples), tuple(reasons), (("zones", details),))


async def _zone(
    dns: PostureDNS, limit: asyncio.Semaphore, zone: str, addresses: tuple[str, ...]
) -> tuple[str | None, list[Verdict]]:
    """The zone's health (None: healthy, else why not) and its verdict on each address."""
    listed, not_listed, *verdicts = await asyncio.gather(
        *(_verdict(dns, limit, zone, a) for a in (TEST_LISTED, TEST_NOT_LISTED, *addresses))
    )
    problems = []
    if listed.state != "listed":
        problems.append(
            f"the test address {TEST_LISTED} must be listed (RFC 5782 section 5): {listed.reason}"
        )
    if not_listed.state != "not_listed":
        problems.append(
            f"the test address {TEST_NOT_LISTED} must not be listed (RFC 5782 section 5): {not_listed.reason}"
        )
    return ("; ".join(problems) or None), verdicts


async def _verdict(dns: PostureDNS, limit: asyncio.Semaphore, zone: str, address: str) -> Verdict:
    name = query_name(address, zone)
    async with limit:
        found = await dns.lookup(name, "A")
    if not found.answered:
        return Verdict("error", 0, (), f"lookup failed: {found.describe()}")
    answers = [ipaddress.IPv4Address(record.address) for record in found.records]  # type: ignore[attr-defined]
    shown = tuple(str(a) for a in answers)
    if not answers:
        return Verdict("not_listed", 0, (), f"not listed ({'NXDOMAIN' if found.nxdomain else 'no A record'})")
    errors = sorted(a for a in answers if a in ERROR_CODES)
    if errors:
        described = ", ".join(f"{a} ({ERROR_CODES[a]})" for a in errors)
        return Verdict("error", errors[0].packed[3], shown, f"error answer {described}: not a listing")
    outside = [str(a) for a in answers if a not in LOOPBACK]
    if outside:
        return Verdict(
            "error",
            0,
            shown,
            f"answer {', '.join(outside)} is outside 127.0.0.0/8: not a DNSBL answer (a resolver "
            "rewriting NXDOMAIN, or a wildcard), not a listing",
        )
    odd = [str(a) for a in answers if not LISTED_FIRST <= a <= LISTED_LAST]
    if odd:
        return Verdict(
            "error", 0, shown, f"answer {', '.join(odd)} is not a listing code (127.0.0.2-127.0.0.255)"
        )
    async with limit:
        txt = await dns.lookup(name, "TXT")
    return Verdict("listed", min(answers).packed[3], shown, f"listed with {', '.join(shown)}: {_reason(txt)}")


def _reason(txt: Lookup) -> str:
    """The zone's TXT at the listed name: its reason, as published (section 2.1)."""
    if not txt.answered:
        return f"no reason (TXT {txt.describe()})"
    texts = txt_texts(txt)
    if not texts:
        return "no reason published (no TXT record)"
    # Printable characters only: the text goes into reasons, one line each.
    text = "".join(c if c.isprintable() else " " for c in "; ".join(texts))
    return text if len(text) <= MAX_TXT_CHARS else text[:MAX_TXT_CHARS] + "..."


CHECK = Check("dnsbl", run)
