"""Certificate names spelled as Go's crypto/x509 spells them (`pkix.Name.String()`).

blackbox_exporter's `probe_ssl_last_chain_info{subject, issuer}` labels are that spelling, and
its users' rules and dashboards match on them, so the blackbox-compatible series must use it,
not RFC 4514 as cryptography writes it. Go differs in three ways: the nine attributes it parses
into fields come in a fixed order whatever the certificate's (SERIALNUMBER, CN, OU, O,
POSTALCODE, STREET, L, ST, C; values of one attribute joined by `+`, CN and SERIALNUMBER the
last one only), every other attribute follows as `OID=#hex` of its value re-encoded in DER
(emailAddress, DC and UID included), and its escaping is its own.
"""

from __future__ import annotations

from cryptography import x509

# Go's attributeTypeNames, by the last arc of 2.5.4.x, in the order String() writes them
# (the reverse of ToRDNSequence's C, ST, L, STREET, POSTALCODE, O, OU, CN, SERIALNUMBER).
_FIELDS: tuple[tuple[int, str, bool], ...] = (  # (arc, name, single: only the last value kept)
    (5, "SERIALNUMBER", True),
    (3, "CN", True),
    (11, "OU", False),
    (10, "O", False),
    (17, "POSTALCODE", False),
    (9, "STREET", False),
    (7, "L", False),
    (8, "ST", False),
    (6, "C", False),
)
_ARCS = {arc for arc, _name, _single in _FIELDS}
# encoding/asn1's PrintableString alphabet ('*' and '&' rejected, as Marshal does).
_PRINTABLE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '()+,-./:=?")
_PRINTABLE_STRING = 0x13
_UTF8_STRING = 0x0C


def go_name_string(name: x509.Name) -> str:
    """`name` as Go's `pkix.Name.String()` writes a name parsed from a certificate."""
    values: dict[int, list[str]] = {arc: [] for arc in _ARCS}
    others: list[str] = []
    for attribute in name:
        arc = _standard_arc(attribute.oid)
        value = attribute.value
        if arc is not None:
            if isinstance(value, str):  # Go skips a non-string value of these attributes
                values[arc].append(value)
            continue
        others.append(f"{attribute.oid.dotted_string}=#{_der_string(value).hex()}")
    rdns: list[str] = []
    for arc, type_name, single in _FIELDS:
        found = values[arc]
        if single:  # Go keeps the last value, and writes none when it is empty
            found = found[-1:] if found and found[-1] else []
        if found:
            rdns.append("+".join(f"{type_name}={_escape(value)}" for value in found))
    # Go places the other attributes first in its sequence, so they come last, reversed.
    rdns += reversed(others)
    return ",".join(rdns)


def _standard_arc(oid: x509.ObjectIdentifier) -> int | None:
    parts = oid.dotted_string.split(".")
    if len(parts) == 4 and parts[:3] == ["2", "5", "4"] and int(parts[3]) in _ARCS:
        return int(parts[3])
    return None


def _escape(value: str) -> str:
    out = []
    last = len(value.encode()) - 1  # Go compares a byte offset with the byte length
    offset = 0
    for char in value:
        escape = char in ',+"\\<>;' or (char == " " and offset in (0, last)) or (char == "#" and offset == 0)
        out.append("\\" + char if escape else char)
        offset += len(char.encode())
    return "".join(out)


def _der_string(value: str | bytes) -> bytes:
    """The DER Go's asn1.Marshal gives a string: PrintableString when its alphabet allows, else
    UTF8String. (A value that is not a string, rare, is taken as its bytes.)"""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    tag = _PRINTABLE_STRING if isinstance(value, str) and set(value) <= _PRINTABLE else _UTF8_STRING
    length = len(raw)
    if length < 0x80:
        header = bytes((tag, length))
    else:
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes((tag, 0x80 | len(size))) + size
    return header + raw
