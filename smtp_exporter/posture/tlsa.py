"""TLSA records against a presented certificate chain, as an SMTP client using DANE judges them
(RFC 6698 section 2.1, RFC 7671, RFC 7672 section 3). posture/dane.py finds the records; this
module says which are usable and which match.

- Usable for SMTP: usage DANE-TA(2) or DANE-EE(3) only (RFC 7672 section 3.1.3: PKIX-TA(0) and
  PKIX-EE(1) "SHOULD NOT" be published and are unusable to SMTP clients, who have no common set
  of trusted CAs); selector Cert(0) or SPKI(1) and matching type Full(0), SHA2-256(1) or
  SHA2-512(2) (RFC 6698 sections 2.1.2-2.1.3; anything else is unusable, RFC 7671 section 4.1).
  (A digest of the wrong length never gets here: dnspython cannot read such a record, and the
  DNS stub reports it apart, as unreadable, which posture/dane.py counts as unusable.)
- Selector 0 is the certificate's DER, 1 its SubjectPublicKeyInfo's DER (RFC 6698 section
  2.1.2); matching type 0 compares them whole, 1 and 2 their SHA-256 / SHA-512 (section 2.1.3).
- DANE-EE(3) matches the leaf only, and nothing else is checked: not its names (RFC 7672 section
  3.2.1), not its dates (RFC 7671 section 5.1: the records, not the certificate, say how long a
  key is good).
- DANE-TA(2) names a trust anchor: a certificate of the presented chain (RFC 7671 section 5.2.2:
  servers MUST send it, unless every such record is "2 0 0", whose data is the certificate itself,
  which then serves as the anchor when not sent). From the leaf to that anchor there must be a
  path with every signature and date valid, and the leaf must carry one of the reference
  identifiers among its DNS subjectAltNames (RFC 7672 section 3.2.2: the TLSA base domain, the
  MX host name, the next-hop domain). The path is cryptography's (posture/pkix.py), with the
  matched certificate as the store's only trust anchor.
- One matching usable record is enough (RFC 6698 section 4.1); each record's match is reported
  all the same, so that a stale record beside the good one shows.
"""

from __future__ import annotations

import enum
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dns.rdata
from cryptography import x509
from cryptography.x509.verification import Store

from smtp_exporter.posture import pkix

DANE_TA = 2
DANE_EE = 3
USABLE_USAGES = (DANE_TA, DANE_EE)
MATCHING_TYPES = (0, 1, 2)  # Full, SHA2-256, SHA2-512
USAGE_NAMES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTED = {0: "certificate", 1: "SPKI"}
MAX_REASON_CHARS = 300


class Match(enum.StrEnum):
    MATCHES = "matches"
    NO_MATCH = "no_match"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class Record:
    usage: int
    selector: int
    matching_type: int
    data: bytes

    @property
    def text(self) -> str:
        """`3 1 1`, as reasons name a record (its data is not shown: a digest says nothing)."""
        return f"{self.usage} {self.selector} {self.matching_type}"

    @property
    def unusable_because(self) -> str | None:
        if self.usage not in USABLE_USAGES:
            name = USAGE_NAMES.get(self.usage, "unknown")
            return f"usage {self.usage} ({name}) is not for SMTP (RFC 7672 section 3.1.3)"
        if self.selector not in SELECTED:
            return f"unknown selector {self.selector}"
        if self.matching_type not in MATCHING_TYPES:
            return f"unknown matching type {self.matching_type}"
        return None

    @property
    def usable(self) -> bool:
        return self.unusable_because is None


@dataclass(frozen=True, slots=True)
class Verdict:
    """One record's outcome against the chain, with its reason in words."""

    record: Record
    match: Match
    reason: str


def records(rdatas: Sequence[dns.rdata.Rdata]) -> tuple[Record, ...]:
    """The TLSA RRset's records in a stable order (DNS gives them in any), which is the order
    of the `index` label."""
    found = {
        Record(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))  # type: ignore[attr-defined]
        for r in rdatas
    }
    return tuple(sorted(found, key=lambda r: (r.usage, r.selector, r.matching_type, r.data)))


def judge(found: Sequence[Record], chain: tuple[bytes, ...], names: Sequence[str]) -> tuple[Verdict, ...]:
    """Each record's verdict on `chain` (DER, leaf first, as presented); `names`: the reference
    identifiers a DANE-TA leaf may match, the TLSA base domain first."""
    certificates = _load(chain)
    return tuple(_judge(record, chain, certificates, names) for record in found)


def _load(chain: tuple[bytes, ...]) -> list[x509.Certificate | None]:
    out: list[x509.Certificate | None] = []
    for der in chain:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an odd serial is not DANE's concern
                out.append(x509.load_der_x509_certificate(der))
        except ValueError:
            out.append(None)
    return out


def _judge(
    record: Record,
    chain: tuple[bytes, ...],
    certificates: list[x509.Certificate | None],
    names: Sequence[str],
) -> Verdict:
    shown = f"TLSA {record.text}"
    why = record.unusable_because
    if why is not None:
        return Verdict(record, Match.UNUSABLE, f"{shown} is unusable: {why}")
    what = SELECTED[record.selector]
    if not chain:
        return Verdict(record, Match.NO_MATCH, f"{shown} cannot match: no certificate was presented")
    if record.usage == DANE_EE:
        if _matches(record, chain[0]):
            return Verdict(record, Match.MATCHES, f"{shown} matches the leaf's {what}")
        return Verdict(record, Match.NO_MATCH, f"{shown} does not match the leaf's {what}")
    return _trust_anchor(record, chain, certificates, names)


def _trust_anchor(
    record: Record,
    chain: tuple[bytes, ...],
    certificates: list[x509.Certificate | None],
    names: Sequence[str],
) -> Verdict:
    shown = f"TLSA {record.text}"
    depth = next(
        (i for i, der in enumerate(chain) if _matches(record, der)),
        None,
    )
    anchor: x509.Certificate | None = None
    if depth is not None:
        anchor = certificates[depth]
        where = "the leaf" if depth == 0 else f"the certificate at depth {depth}"
    elif record.selector == 0 and record.matching_type == 0:
        # RFC 7671 section 5.2.2: a "2 0 0" record carries the anchor itself, which the server
        # may then leave out of its chain.
        anchor = _parse(record.data)
        where = "the certificate it carries (2 0 0, not presented)"
    if anchor is None:
        by = " by its SPKI" if record.selector == 1 else ""
        return Verdict(record, Match.NO_MATCH, f"{shown} matches no certificate of the presented chain{by}")
    subject = anchor.subject.rfc4514_string()[:100] or "no subject"
    error = _path(anchor, chain, names)
    if error is None:
        return Verdict(
            record,
            Match.MATCHES,
            f"{shown} matches {where} ({subject}), and the leaf's path to it is valid for {names[0]}",
        )
    return Verdict(
        record,
        Match.NO_MATCH,
        f"{shown} matches {where} ({subject}), but the leaf's path to it is not valid: {error}"[
            :MAX_REASON_CHARS
        ],
    )


def _path(anchor: x509.Certificate, chain: tuple[bytes, ...], names: Sequence[str]) -> str | None:
    """None when a path from the leaf to `anchor` is valid for one of `names`, else the first
    name's error (the base domain's: the one a sender names first)."""
    store = Store([anchor])
    errors = [pkix.verify_path(store, "it", chain, name) for name in dict.fromkeys(names)]
    if any(error is None for error in errors):
        return None
    return errors[0]


def _parse(der: bytes) -> x509.Certificate | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _matches(record: Record, der: bytes) -> bool:
    selected = der if record.selector == 0 else spki(der)
    if selected is None:
        return False
    if record.matching_type == 1:
        selected = hashlib.sha256(selected).digest()
    elif record.matching_type == 2:
        selected = hashlib.sha512(selected).digest()
    return selected == record.data


def spki(der: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo of a DER certificate, byte for byte as the certificate holds it
    (re-encoding the parsed key could differ from what the record's owner hashed): the seventh
    field of the TBSCertificate, the sixth without the optional version (RFC 5280 section 4.1)."""
    try:
        outer, _ = _tlv(der, 0)  # Certificate
        offset, _ = _tlv(der, outer)  # its tbsCertificate's first field
        if der[offset] == 0xA0:  # [0] EXPLICIT version
            offset = sum(_tlv(der, offset))
        for _field in range(5):  # serialNumber, signature, issuer, validity, subject
            offset = sum(_tlv(der, offset))
        start, length = _tlv(der, offset)
    except IndexError:
        return None
    if der[offset] != 0x30 or start + length > len(der):
        return None
    return der[offset : start + length]


def _tlv(der: bytes, offset: int) -> tuple[int, int]:
    """(where the content of the DER element at `offset` starts, its length)."""
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2, first
    count = first & 0x7F
    if not 1 <= count <= 4:
        raise IndexError("unsupported DER length")
    return offset + 2 + count, int.from_bytes(der[offset + 2 : offset + 2 + count], "big")


def rollover_ready(found: Sequence[Record]) -> bool:
    """At least two usable records, one of them DANE-EE: "3 x x" beside another "3 x x" (the
    current and the next key) or beside a "2 x x" (the issuer) keeps mail flowing across a key
    or certificate change (RFC 7671 section 8.1, RFC 7672 section 3.1.1)."""
    usable = [record for record in found if record.usable]
    return len(usable) >= 2 and any(record.usage == DANE_EE for record in usable)
