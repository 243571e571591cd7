"""DANE for SMTP (RFC 7672, on RFC 7671 and RFC 6698): would a sending MTA that uses DANE
authenticate the MX the probe connected to, and if not, why.

The lookups, in a sender's order, each answer classified by posture/dns.py (the AD bit of the
module's resolver, never signatures checked here):

- The resolver first: a resolver that does not validate sets AD on nothing, and every signed
  zone would look unsigned. The root's DNSKEY is signed everywhere; no AD on it means the
  resolver does not validate (`resolver_not_validating`, `smtp_posture_resolver_validating 0`),
  never a false "DANE does not apply". Asked at each run (a resolver reconfigured under a running
  exporter shows at the next run), and once at start-up and reload (`warn_unless_validating`).
- The MX RRset (mx: true): DANE applies only to MX hosts from a secure MX RRset (RFC 7672
  section 2.2.1); insecure: `insecure`; bogus or failed: `lookup_failed` (a sender defers).
  Without mx: the module's target host itself is the server name (section 2.2.2).
- The server's address records (A or AAAA, of the family the probe connected over; both when it
  did not connect): insecure means DANE does not apply, bogus or failed a sender skips the host
  (section 2.2.2). A secure CNAME chain there makes its end the first TLSA base candidate.
- TLSA at `_<port>._tcp.<base>`, port as probed (section 2.2.3). RFC 7671 section 7: with a
  secure CNAME expansion the expanded name is tried first, and the original name when that
  finds no secure records; otherwise the original name. Bogus or failed: `lookup_failed`;
  insecure: `insecure`; secure denial (NXDOMAIN or NODATA): `no_tlsa`; records, none usable:
  `unusable` (TLS is still required, unauthenticated: RFC 7672 section 2.2); otherwise the
  presented chain decides, `valid` or `invalid` (posture/tlsa.py). A record that cannot be read
  (a digest whose length its matching type does not allow) is unusable like any other: it is
  counted among the records and skipped, never a failed lookup.

The chain judged is the one the server presented to the probe (TLSInfo.chain, leaf first, as
sent), for the probe's SNI: `tls_config.server_name`, or else the MX host (or target) name. RFC
7672 has senders send the TLSA base domain instead; the two differ only for a CNAME-expanded
base or a configured server_name, and the report says so then, since a server choosing its
certificate by SNI may present another chain to a sender.

Only the MX the probe connected to is judged (the others' chains were not seen); under
`mx_mode: each` every MX has its own series and its own judgement.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from smtp_exporter.metrics.families import bound
from smtp_exporter.metrics.posture import (
    DANE_ROLLOVER_READY,
    DANE_STATE,
    DANE_TLSA_RECORD_MATCH,
    DANE_TLSA_RECORDS,
    DNSSEC_SECURE,
    RESOLVER_VALIDATING,
)
from smtp_exporter.model import CheckReport, FailureReason, PostureSample
from smtp_exporter.posture import tlsa
from smtp_exporter.posture.check import Check, CheckInput, sample
from smtp_exporter.posture.dns import Lookup, PostureDNS, Security

log = logging.getLogger("smtp_exporter.posture")

# The `state` label values: a closed set, one series each, 1 for the current one.
STATES = ("valid", "invalid", "no_tlsa", "insecure", "lookup_failed", "unusable", "resolver_not_validating")
ROOT = "."


async def resolver_check(dns: PostureDNS) -> Lookup:
    """The root's DNSKEY, asked with DO: `secure` (AD set) when the resolver validates."""
    return await dns.lookup(ROOT, "DNSKEY")


def not_validating_reason(root: Lookup) -> str:
    if root.security is Security.INSECURE:
        return "the resolver does not validate DNSSEC: no AD bit on the root's DNSKEY"
    return f"the resolver's DNSSEC validation is unknown: {root.describe()}"


async def warn_unless_validating(clients: Iterable[tuple[str, PostureDNS]]) -> None:
    """Log, once per (module, resolver), a resolver of a DANE module that does not validate:
    at start-up and reload, before the first probe says it in its series."""
    for name, dns in clients:
        root = await resolver_check(dns)
        if root.security is not Security.SECURE:
            log.warning(
                "DANE needs a validating resolver",
                extra={"fields": {"module": name, "problem": not_validating_reason(root)}},
            )


@dataclass(slots=True)
class _Run:
    """What one run found, filled in as the lookups go."""

    state: str | None = None
    reasons: list[str] = field(default_factory=list)
    security: dict[str, str] = field(default_factory=dict)  # record -> Security value
    host: str | None = None  # the server name (MX host or target host)
    base: str | None = None  # the TLSA base domain used
    tlsa_name: str | None = None
    records: tuple[tlsa.Record, ...] = ()
    unreadable: tuple[str, ...] = ()  # TLSA records present that could not be read: unusable
    known: bool = False  # the TLSA RRset is securely known (records or denial)
    verdicts: tuple[tlsa.Verdict, ...] = ()

    def end(self, state: str, reason: str) -> None:
        self.state = state
        self.reasons.append(reason)


async def run(given: CheckInput) -> CheckReport:
    root, found = await asyncio.gather(resolver_check(given.dns), _find(given))
    validating = root.security is Security.SECURE
    if not validating:
        # Whatever the lookups seemed to say (an unsigned zone, most often) was said by a resolver
        # that does not check: only that is reported, with the record sets' DNSSEC states.
        found = _Run(
            "resolver_not_validating",
            [f"{not_validating_reason(root)}: DANE cannot be judged"],
            found.security,
            found.host,
        )
    assert found.state is not None
    labels = f'mx_host="{bound(found.host)}",' if given.module.mx and found.host else ""
    samples: list[PostureSample] = [sample(RESOLVER_VALIDATING, "", 1 if validating else 0)]
    for kind, security in found.security.items():  # mx is the domain's, the others the host's
        own = labels if kind in ("address", "tlsa") else ""
        samples.append(sample(DNSSEC_SECURE, f'{own}record="{kind}"', 1 if security == "secure" else 0))
    samples += [sample(DANE_STATE, f'{labels}state="{s}"', 1 if s == found.state else 0) for s in STATES]
    if found.known:
        present = len(found.records) + len(found.unreadable)
        samples.append(sample(DANE_TLSA_RECORDS, labels.rstrip(","), present))
    for index, verdict in enumerate(found.verdicts):
        record = verdict.record
        record_labels = (
            f'{labels}usage="{record.usage}",selector="{record.selector}",'
            f'matching_type="{record.matching_type}",index="{index}"'
        )
        matched = 1 if verdict.match is tlsa.Match.MATCHES else 0
        samples.append(sample(DANE_TLSA_RECORD_MATCH, record_labels, matched))
    ready = tlsa.rollover_ready(found.records)
    samples.append(sample(DANE_ROLLOVER_READY, labels.rstrip(","), 1 if ready else 0))
    if found.records:
        usable = sum(1 for record in found.records if record.usable)
        found.reasons.append(
            f"rollover {'ready' if ready else 'not ready'}: {usable} usable TLSA record(s)"
            + (
                ""
                if ready
                else " (a second one, 3xx beside 3xx or 2xx, keeps mail flowing across a key change)"
            )
        )
    details: tuple[tuple[str, object], ...] = (
        ("state", found.state),
        ("resolver_validating", validating),
        ("host", found.host),
        ("tlsa_base", found.base),
        ("tlsa_name", found.tlsa_name),
        ("dnssec", dict(found.security)),
        (
            "records",
            [
                {
                    "index": index,
                    "usage": v.record.usage,
                    "selector": v.record.selector,
                    "matching_type": v.record.matching_type,
                    "usable": v.record.usable,
                    "match": v.match.value,
                    "reason": v.reason,
                }
                for index, v in enumerate(found.verdicts)
            ],
        ),
        ("unreadable_records", list(found.unreadable)),
        ("rollover_ready", ready),
    )
    return CheckReport("dane", given.now, tuple(samples), tuple(found.reasons), details)


async def _find(given: CheckInput) -> _Run:
    found = _Run()
    if given.result.mx is not None:  # the series' MX, also when DANE ends before its name is used
        found.host = given.result.mx.host
    host = await _server_name(given, found)
    if host is None:
        return found
    found.host = host
    expanded = await _addresses(given, host, found)
    if found.state is not None:
        return found
    answer = await _tlsa(given, host, expanded, found)
    if found.state is not None or answer is None:
        return found
    found.records = tlsa.records(answer.records)
    found.unreadable = answer.unreadable
    found.known = True
    if found.unreadable:
        found.reasons.append(
            f"{len(found.unreadable)} TLSA record(s) at {found.tlsa_name} cannot be read "
            f"({found.unreadable[0]}): unusable, as a sender skips them (RFC 7672 section 2.2)"
        )
    if not found.records and not found.unreadable:
        found.end(
            "no_tlsa",
            f"no TLSA records at {found.tlsa_name} (secure denial): the MX has not opted in to DANE",
        )
        return found
    if not any(record.usable for record in found.records):
        found.verdicts = tlsa.judge(found.records, (), ())
        found.reasons += [verdict.reason for verdict in found.verdicts]
        found.end(
            "unusable",
            f"none of the {len(found.records) + len(found.unreadable)} TLSA record(s) at {found.tlsa_name} "
            "is usable for SMTP: "
            "senders still require TLS, but do not authenticate it (RFC 7672 section 2.2)",
        )
        return found
    _judge(given, host, found)
    return found


async def _server_name(given: CheckInput, found: _Run) -> str | None:
    """The name DANE is about: the connected MX from a secure MX RRset, or the target host."""
    domain = given.domain
    if not given.module.mx:
        try:
            ipaddress.ip_address(domain)
        except ValueError:
            return domain
        found.end(
            "insecure", f"the target {domain} is an address: no name to look TLSA up for, DANE does not apply"
        )
        return None
    mx = await given.dns.lookup(domain, "MX")
    found.security["mx"] = mx.security.value
    if not mx.answered:
        found.end(
            "lookup_failed",
            f"MX lookup failed: {mx.describe()}: a DANE sender defers (RFC 7672 section 2.2.1)",
        )
        return None
    if mx.security is not Security.SECURE:
        found.end(
            "insecure",
            f"the MX RRset of {domain} is not signed (insecure): DANE does not apply (RFC 7672 section 2.2.1)",
        )
        return None
    if given.result.mx is not None:
        return given.result.mx.host
    exchanges: list[tuple[int, str]] = sorted(
        (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())  # type: ignore[attr-defined]
        for r in mx.records
    )
    if not exchanges:
        return domain  # no MX: the domain is its own mail host (RFC 5321 section 5.1)
    if exchanges[0][1] in ("", "."):
        found.end("insecure", f"{domain} has a null MX (RFC 7505): it takes no mail, DANE does not apply")
        return None
    return exchanges[0][1]


async def _addresses(given: CheckInput, host: str, found: _Run) -> str | None:
    """The secure CNAME expansion of `host`'s address records, if any; ends `found` when they
    are not secure."""
    address = given.result.address
    rdtypes = ("A", "AAAA") if address is None else ("A",) if address.family == 4 else ("AAAA",)
    lookups = await asyncio.gather(*(given.dns.lookup(host, rdtype) for rdtype in rdtypes))
    failed = [lookup for lookup in lookups if not lookup.answered]
    insecure = [lookup for lookup in lookups if lookup.security is not Security.SECURE]
    found.security["address"] = (failed or insecure or lookups)[0].security.value
    if failed:
        found.end(
            "lookup_failed",
            f"address lookup failed: {failed[0].describe()}: a DANE sender skips this host (RFC 7672 section 2.2.2)",
        )
        return None
    if insecure:
        found.end(
            "insecure",
            f"the {insecure[0].rdtype} records of {host} are not signed (insecure): DANE does not apply "
            "(RFC 7672 section 2.2.2)",
        )
        return None
    with_records = [lookup for lookup in lookups if lookup.records]
    if not with_records:
        found.end(
            "lookup_failed",
            f"{host} has no {' or '.join(rdtypes)} records: a DANE sender cannot deliver to it",
        )
        return None
    aliases = with_records[0].aliases
    return aliases[-1] if aliases else None


async def _tlsa(given: CheckInput, host: str, expanded: str | None, found: _Run) -> Lookup | None:
    """The TLSA RRset a sender would use (RFC 7671 section 7), or None with `found` ended."""
    address = given.result.address
    port = address.port if address is not None else given.module.port  # the port as probed
    candidates = [expanded, host] if expanded is not None else [host]
    for index, base in enumerate(candidates):
        name = f"_{port}._tcp.{base}"
        answer = await given.dns.lookup(name, "TLSA")
        found.security["tlsa"] = answer.security.value
        found.base, found.tlsa_name = base, name
        last = index == len(candidates) - 1
        if not answer.answered:
            found.end(
                "lookup_failed",
                f"TLSA lookup failed: {answer.describe()}: a DANE sender defers (RFC 7672 section 2.2.3)",
            )
            return None
        if answer.security is Security.SECURE and (answer.records or answer.unreadable or last):
            return answer
        if last:
            found.end(
                "insecure",
                f"the TLSA RRset at {name} is not signed (insecure): DANE does not apply (RFC 7672 section 2.2.3)",
            )
            return None
        found.reasons.append(f"no secure TLSA records at {name} (the CNAME-expanded name): trying {host}")
    return None


def _judge(given: CheckInput, host: str, found: _Run) -> None:
    result = given.result
    chain = result.tls.chain if result.tls is not None else ()
    assert found.base is not None and found.tlsa_name is not None
    names = [found.base, host] + ([given.domain] if given.module.mx else [])
    found.verdicts = tlsa.judge(found.records, chain, names)
    found.reasons += [verdict.reason for verdict in found.verdicts]
    if not chain:
        why = "the probe got no certificate"
        if result.failure is not None:
            why += f" ({result.failure.reason.value})"
        if result.failure is not None and result.failure.reason is FailureReason.STARTTLS_NOT_OFFERED:
            why = "the server offers no STARTTLS, which DANE makes mandatory (RFC 7672 section 2.2)"
        found.end(
            "invalid", f"TLSA records at {found.tlsa_name} are published but {why}: DANE senders defer mail"
        )
        return
    sni = given.module.tls_config.server_name or host
    if sni != found.base:
        found.reasons.append(
            f"the probe sent SNI {sni}; DANE senders send the TLSA base domain {found.base}: "
            "the chain judged is the one presented to the probe"
        )
    if any(verdict.match is tlsa.Match.MATCHES for verdict in found.verdicts):
        found.end(
            "valid",
            f"DANE valid: a usable TLSA record at {found.tlsa_name} authenticates the presented chain",
        )
    else:
        found.end(
            "invalid",
            f"DANE invalid: no usable TLSA record at {found.tlsa_name} matches the presented chain: "
            "DANE senders defer mail",
        )


CHECK = Check("dane", run)
