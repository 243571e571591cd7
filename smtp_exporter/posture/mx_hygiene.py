"""MX hygiene: what is wrong with a mail domain's MX RRset, whatever the probe's outcome.

- RFC 7505 section 3: a null MX is one MX record with preference 0 and the root as exchange; a
  domain with one MUST NOT have other MX records. Alone it says "no mail here" (`null_mx`);
  beside others, or with another preference, it is invalid (`null_mx_invalid`).
- RFC 5321 section 5.1: without MX records mail goes to the domain's own A/AAAA (`no_mx`: most
  often a mistake for a domain that is probed as a mail domain).
- RFC 2181 section 10.3: an MX exchange must be a host's own name, not an alias (`cname`);
  RFC 5321 section 5.1 tells senders to accept it all the same, so it works until it does not.
- An exchange without A or AAAA records (`unresolvable`), or with an address in a private or
  reserved range (`private_address`: not reachable from the Internet, RFC 6890's registries as
  Python's `ipaddress.is_global` knows them).
- The same exchange listed twice (`duplicate`).
- `lookup_failed`: an answer this check needed did not come (bogus or failed, see posture/dns.py),
  so the other problems are unknown rather than absent.
"""

from __future__ import annotations

import asyncio
import ipaddress

from smtp_exporter.metrics.posture import MX_PROBLEM, MX_RECORDS
from smtp_exporter.model import CheckReport
from smtp_exporter.posture.check import Check, CheckInput, sample
from smtp_exporter.posture.dns import Lookup

# The `problem` label values: a closed set, each always reported once the check has run.
PROBLEMS = (
    "null_mx",
    "null_mx_invalid",
    "no_mx",
    "cname",
    "unresolvable",
    "private_address",
    "duplicate",
    "lookup_failed",
)
MAX_HOSTS = 10  # exchanges looked up (as the probe tries at most this many)
MAX_REASONS = 20
MAX_NAME_CHARS = 256


async def run(given: CheckInput) -> CheckReport:
    domain = given.domain
    dns = given.dns
    found: set[str] = set()
    reasons: list[str] = []
    answer = await dns.lookup(domain, "MX")
    records: list[tuple[int, str]] = []
    hosts: list[dict[str, object]] = []
    if not answer.answered:
        found.add("lookup_failed")
        reasons.append(f"MX lookup failed: {answer.describe()}")
    else:
        records = [
            (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())  # type: ignore[attr-defined]
            for r in answer.records
        ]
        records.sort(key=lambda record: record[0])
        _null_mx(records, found, reasons, domain)
        if not records:
            found.add("no_mx")
            what = "does not exist" if answer.nxdomain else "has no MX records"
            reasons.append(f"{domain} {what}: mail would go to its own A/AAAA (RFC 5321 section 5.1)")
        names = [host for _, host in records if host not in ("", ".")]
        seen: set[str] = set()
        for name in names:
            if name in seen and f"MX {name} is listed more than once" not in reasons:
                found.add("duplicate")
                reasons.append(f"MX {name} is listed more than once")
            seen.add(name)
        unique = list(dict.fromkeys(names))[:MAX_HOSTS]
        lookups = await asyncio.gather(*(_addresses(given, name) for name in unique))
        for name, (a, aaaa) in zip(unique, lookups, strict=True):
            hosts.append(_host(name, a, aaaa, found, reasons))
    if not found:
        reasons.append(f"{len(records)} MX record{'s' if len(records) != 1 else ''}, no problem found")
    samples = [sample(MX_PROBLEM, f'problem="{p}"', 1 if p in found else 0) for p in PROBLEMS]
    if answer.answered:
        samples.insert(0, sample(MX_RECORDS, "", len(records)))
    details: tuple[tuple[str, object], ...] = (
        ("mx_security", answer.security.value),
        ("mx_records", [{"preference": p, "host": h or "."} for p, h in records]),
        ("hosts", hosts),
        ("problems", [p for p in PROBLEMS if p in found]),
    )
    return CheckReport("mx_hygiene", given.now, tuple(samples), tuple(reasons[:MAX_REASONS]), details)


def _null_mx(records: list[tuple[int, str]], found: set[str], reasons: list[str], domain: str) -> None:
    null = [record for record in records if record[1] in ("", ".")]
    if not null:
        return
    if len(records) == 1 and null[0][0] == 0:
        found.add("null_mx")
        reasons.append(f"{domain} has a null MX (RFC 7505): it accepts no mail")
    elif len(records) > 1:
        found.add("null_mx_invalid")
        reasons.append(
            f"{domain} has a null MX beside {len(records) - 1} other MX record(s): invalid (RFC 7505 section 3)"
        )
    else:
        found.add("null_mx_invalid")
        reasons.append(
            f"{domain} has a null MX with preference {null[0][0]}, not 0: invalid (RFC 7505 section 3)"
        )


async def _addresses(given: CheckInput, name: str) -> tuple[Lookup, Lookup]:
    a, aaaa = await asyncio.gather(given.dns.lookup(name, "A"), given.dns.lookup(name, "AAAA"))
    return a, aaaa


def _host(name: str, a: Lookup, aaaa: Lookup, found: set[str], reasons: list[str]) -> dict[str, object]:
    addresses = [str(r.address) for r in (*a.records, *aaaa.records)]  # type: ignore[attr-defined]
    shown = name[:MAX_NAME_CHARS]
    aliases = a.aliases or aaaa.aliases
    if aliases:
        found.add("cname")
        reasons.append(f"MX {shown} is a CNAME to {aliases[-1]} (RFC 2181 section 10.3)")
    if not addresses:
        failed = [lookup for lookup in (a, aaaa) if not lookup.answered]
        if failed:
            found.add("lookup_failed")
            reasons += [f"address lookup failed: {lookup.describe()}" for lookup in failed]
        else:
            found.add("unresolvable")
            what = "does not exist" if a.nxdomain else "has no A or AAAA records"
            reasons.append(f"MX {shown} {what}")
    private = [ip for ip in addresses if not ipaddress.ip_address(ip).is_global]
    if private:
        found.add("private_address")
        reasons.append(f"MX {shown} resolves to {', '.join(private)}: a private or reserved address")
    return {
        "host": name,
        "addresses": addresses,
        "cname": aliases[-1] if aliases else None,
        "security": {"a": a.security.value, "aaaa": aaaa.security.value},
    }


CHECK = Check("mx_hygiene", run)
