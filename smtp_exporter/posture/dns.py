"""The posture checks' DNS: queries to the module's `dns` nameservers with DO set, each answer
classified by what the configured resolver says about it (issue 14's DNSSEC rule).

- `secure`: NOERROR or NXDOMAIN with AD=1 (RFC 4035 3.2.3: the resolver validated it).
- `insecure`: NOERROR or NXDOMAIN with AD=0 (not signed, or a resolver that does not validate:
  telling these apart is the resolver self-check's job, not this module's).
- `bogus`: SERVFAIL, with the extended DNS error (RFC 8914) when the resolver gives one; codes
  6-12 are the DNSSEC ones (DNSSEC Bogus, Signature Expired, ... NSEC Missing). A SERVFAIL with
  another EDE code (e.g. 22, No Reachable Authority) is `failed`, not `bogus`.
- `failed`: no usable answer (timeout, REFUSED, FORMERR, a network error).

The AD bit is trusted, never re-derived: signatures are not checked against the zone's own keys
(a forged zone would sign itself). The stub queries the nameservers itself (dnspython's
messages, sent by posture/dns_transport.py), because dnspython's resolver layer hides the flags,
the rcode and EDE of an answer. No cache: each check sees the DNS a sending MTA would see.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.resolver

from smtp_exporter.config.schema import DNSConfig
from smtp_exporter.posture.dns_transport import MalformedAnswer, exchange
from smtp_exporter.targets import parse_nameserver

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no fragmentation, TCP beyond it
DNSSEC_EDE_CODES = range(6, 13)  # RFC 8914 4.7-4.13
MAX_CNAME_CHAIN = 8
# Types whose records a sender judges one by one, skipping those it cannot use (RFC 7672 section
# 2.2: an unusable TLSA record is ignored, the others still count): an unreadable one among them
# is reported, not the whole answer refused. For every other type it fails the lookup.
SKIPS_UNREADABLE = frozenset({"TLSA"})


class Security(enum.StrEnum):
    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Lookup:
    """One answer, classified. `records` are those of the asked type at the end of the CNAME
    chain the answer holds (`aliases`: each CNAME followed, from the name asked)."""

    name: str  # as asked, lower case, without the trailing dot
    rdtype: str  # "MX", "A", ...
    security: Security
    rcode: str | None  # "NOERROR", "NXDOMAIN", "SERVFAIL", ...; None without an answer
    records: tuple[dns.rdata.Rdata, ...] = ()
    aliases: tuple[str, ...] = ()
    ede: int | None = None  # RFC 8914 code of a SERVFAIL, when given
    error: str | None = None  # in words, for `bogus` and `failed`
    # Records of the answer that could not be read (why, each), e.g. a TLSA digest whose length
    # does not match its matching type: present, but not among `records`.
    unreadable: tuple[str, ...] = ()

    @property
    def answered(self) -> bool:
        """NOERROR or NXDOMAIN: the name's records (maybe none) are known."""
        return self.security in (Security.SECURE, Security.INSECURE)

    @property
    def nxdomain(self) -> bool:
        return self.rcode == "NXDOMAIN"

    def describe(self) -> str:
        """`mx.example.org A: bogus (SERVFAIL, EDE 7)` and the like, for reasons."""
        what = f"{self.name} {self.rdtype}"
        if self.error:
            return f"{what}: {self.security.value} ({self.error})"
        return f"{what}: {self.security.value}"


class PostureDNS:
    """A stub that asks the module's nameservers with DO set: in order, the next on failure or
    SERVFAIL, each given an equal share of what is left of the timeout."""

    def __init__(self, config: DNSConfig) -> None:
        self.timeout = config.timeout
        self._setup_error: str | None = None
        self._nameservers: list[tuple[str, int]] = []
        if config.nameservers:
            self._nameservers = [parse_nameserver(entry) for entry in config.nameservers]
        else:
            try:
                system = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration as exc:
                self._setup_error = f"no system resolver configured: {exc}"
            else:
                self._nameservers = [(str(ns), 53) for ns in system.nameservers]

    async def lookup(self, name: str, rdtype: str) -> Lookup:
        """The classified answer for `name`/`rdtype` within the module's DNS timeout (for all
        nameservers together). Never raises for DNS trouble: that is `failed` or `bogus`."""
        name = name.rstrip(".").lower()
        if self._setup_error is not None or not self._nameservers:
            return Lookup(name, rdtype, Security.FAILED, None, error=self._setup_error or "no nameserver")
        qname = dns.name.from_text(name, origin=dns.name.root)
        query = dns.message.make_query(
            qname, dns.rdatatype.from_text(rdtype), use_edns=0, want_dnssec=True, payload=EDNS_PAYLOAD
        )
        deadline = time.monotonic() + self.timeout
        servfail: Lookup | None = None
        failure = "no nameserver answered"
        servers = self._nameservers
        for index, (host, port) in enumerate(servers):
            left = deadline - time.monotonic()
            if left <= 0:
                failure = f"no answer within {self.timeout:g}s"
                break
            # A silent first server leaves the others their share of the timeout.
            share = left / (len(servers) - index)
            try:
                answer = await exchange(query, host, port, share)
            except TimeoutError:
                failure = f"no answer within {self.timeout:g}s"
                continue
            except (OSError, dns.exception.DNSException, MalformedAnswer) as exc:
                failure = (
                    f"{host}: {type(exc).__name__}: {exc}" if str(exc) else f"{host}: {type(exc).__name__}"
                )
                continue
            found = _classify(name, rdtype, qname, answer.message, answer.unreadable)
            if found.answered:
                return found
            if found.rcode == "SERVFAIL":
                servfail = servfail or found
            failure = found.error or failure
        return servfail or Lookup(name, rdtype, Security.FAILED, None, error=failure)


def _classify(
    name: str,
    rdtype: str,
    qname: dns.name.Name,
    response: dns.message.Message,
    unreadable: tuple[str, ...],
) -> Lookup:
    rcode = response.rcode()
    text = dns.rcode.to_text(rcode)
    if unreadable and rdtype not in SKIPS_UNREADABLE:
        return Lookup(name, rdtype, Security.FAILED, text, error=f"unreadable record: {unreadable[0]}"[:200])
    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        security = Security.SECURE if response.flags & dns.flags.AD else Security.INSECURE
        records, aliases = _follow(response, qname, dns.rdatatype.from_text(rdtype))
        return Lookup(name, rdtype, security, text, records, aliases, unreadable=unreadable)
    if rcode == dns.rcode.SERVFAIL:
        ede = next((opt for opt in response.options if isinstance(opt, dns.edns.EDEOption)), None)
        code = None if ede is None else int(ede.code)
        if code is None:
            return Lookup(name, rdtype, Security.BOGUS, text, error="SERVFAIL")
        detail = f"SERVFAIL, EDE {code}" + (f": {ede.text}" if ede is not None and ede.text else "")
        security = Security.BOGUS if code in DNSSEC_EDE_CODES else Security.FAILED
        return Lookup(name, rdtype, security, text, ede=code, error=detail[:200])
    return Lookup(name, rdtype, Security.FAILED, text, error=text)


def _follow(
    response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> tuple[tuple[dns.rdata.Rdata, ...], tuple[str, ...]]:
    """The records of `rdtype` at the end of the answer's CNAME chain from `qname`."""
    owner = qname
    aliases: list[str] = []
    for _ in range(MAX_CNAME_CHAIN + 1):
        found = next((r for r in response.answer if r.name == owner and r.rdtype == rdtype), None)
        if found is not None:
            return tuple(found), tuple(aliases)
        cname = next(
            (r for r in response.answer if r.name == owner and r.rdtype == dns.rdatatype.CNAME), None
        )
        if cname is None or rdtype == dns.rdatatype.CNAME:
            break
        owner = next(iter(cname)).target
        aliases.append(owner.to_text(omit_final_dot=True).lower())
    return (), tuple(aliases)


def txt_texts(lookup: Lookup) -> list[str]:
    """Each TXT record of `lookup` as one text: its strings joined (RFC 7208 section 3.3 does so
    for SPF; RFC 8461 and 8460 records are read the same way), bytes that are not UTF-8 replaced."""
    return [b"".join(r.strings).decode("utf-8", "replace") for r in lookup.records]  # type: ignore[attr-defined]
