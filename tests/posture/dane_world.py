"""The DANE tests' world: a real CA hierarchy (root, intermediate, leaf) built with cryptography,
served by aiosmtpd over STARTTLS, and TLSA records computed from those very certificates into the
DNSSEC lab (tests/servers/dnssec.py: nsd serving signed zones, a validating unbound)."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers.tls import ServerCert

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    names: tuple[str, ...] = (),
    not_after: datetime.datetime = NOW + 365 * DAY,
) -> x509.Certificate:
    issuer_name, signer = (_name(subject), key) if issuer is None else (_name(issuer[0]), issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        sans = x509.SubjectAlternativeName([x509.DNSName(name) for name in names])
        builder = builder.add_extension(sans, critical=False)
    return builder.sign(signer, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def association(cert: x509.Certificate, selector: int, matching_type: int) -> bytes:
    """What a TLSA record `_ selector matching_type` holds for `cert` (RFC 6698 section 2.1)."""
    data = der(cert) if selector == 0 else spki(cert)
    if matching_type == 1:
        return hashlib.sha256(data).digest()
    if matching_type == 2:
        return hashlib.sha512(data).digest()
    return data


@dataclass(frozen=True, slots=True)
class Chain:
    """A presented chain (leaf, intermediate, root, as the server sends it) and its files."""

    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate
    server: ServerCert


class Hierarchy:
    """One root and intermediate key; `chain()` issues leaves under them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.root_key, self.mid_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        self.root = certificate("dane test root", self.root_key, None, ca=True, not_after=NOW + 3650 * DAY)
        self._count = 0

    def chain(
        self, *names: str, intermediate_not_after: datetime.datetime = NOW + 365 * DAY, send_root: bool = True
    ) -> Chain:
        """A leaf for `names` under a new intermediate; the server sends the root too unless
        `send_root` is False."""
        issuer = ("dane test root", self.root_key)
        mid = certificate(
            "dane test intermediate", self.mid_key, issuer, ca=True, not_after=intermediate_not_after
        )
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = certificate(
            names[0], leaf_key, ("dane test intermediate", self.mid_key), ca=False, names=names
        )
        self._count += 1
        chain_file = self.directory / f"dane-chain-{self._count}.pem"
        sent = (leaf, mid, self.root) if send_root else (leaf, mid)
        chain_file.write_bytes(b"".join(c.public_bytes(PEM) for c in sent))
        key_file = self.directory / f"dane-leaf-{self._count}.key"
        key_pem = leaf_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        key_file.write_bytes(key_pem)
        return Chain(
            leaf, mid, self.root, ServerCert(chain_file.read_bytes(), key_pem, str(chain_file), str(key_file))
        )


def other_key_spki_sha256() -> bytes:
    """The 3 1 1 data of a key no server presents: a stale record, or the next key of a rollover."""
    return hashlib.sha256(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).digest()
