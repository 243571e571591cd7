"""Hostile certificates: a 50-certificate chain and a 1 MB certificate (a huge SAN list).

Built once per test session with `cryptography` and written to files, so the hostile peer
process (tests/hostile/peer_host.py) can load them into its own SSL contexts.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers.tls import TestCA

CHAIN_LENGTH = 50  # certificates sent by the server: the leaf and 49 intermediates
HUGE_CERT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Material:
    """Paths of every certificate and key the hostile peers use (JSON-serialisable)."""

    ca_file: str  # the suite's trustme CA: what probe modules trust
    server_cert: str  # a valid chain for 127.0.0.1/localhost, signed by ca_file
    server_key: str
    chain_root: str  # root of the 50-certificate chain (not in ca_file)
    chain_cert: str  # leaf + 49 intermediates
    chain_key: str
    huge_cert: str  # ~1 MB leaf signed by ca_file
    huge_key: str

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str) -> Material:
        return cls(**json.loads(Path(path).read_text()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: str | x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer if isinstance(issuer, x509.Name) else _name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def _ca_extensions(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    return builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    ).add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )


def _leaf_extensions(
    builder: x509.CertificateBuilder, sans: list[x509.GeneralName]
) -> x509.CertificateBuilder:
    return builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )


LOOPBACK_SANS: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
]


def write_chain(directory: Path, length: int = CHAIN_LENGTH) -> tuple[str, str, str]:
    """A root and a chain of `length` certificates (leaf first): returns (root, chain, key) files."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_extensions(_builder("hostile chain root", "hostile chain root", root_key.public_key())).sign(
        root_key, hashes.SHA256()
    )
    issuer_name, issuer_key = "hostile chain root", root_key
    intermediates: list[x509.Certificate] = []
    for depth in range(1, length):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"hostile intermediate {depth}"
        intermediates.append(
            _ca_extensions(_builder(name, issuer_name, key.public_key())).sign(issuer_key, hashes.SHA256())
        )
        issuer_name, issuer_key = name, key
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _leaf_extensions(_builder("localhost", issuer_name, leaf_key.public_key()), LOOPBACK_SANS).sign(
        issuer_key, hashes.SHA256()
    )
    root_file, chain_file, key_file = (directory / n for n in ("chain-root.pem", "chain.pem", "chain.key"))
    root_file.write_bytes(_pem(root))
    chain_file.write_bytes(_pem(leaf) + b"".join(_pem(c) for c in reversed(intermediates)))
    key_file.write_bytes(_key_pem(leaf_key))
    return str(root_file), str(chain_file), str(key_file)


def write_huge_certificate(directory: Path, ca: TestCA, size: int = HUGE_CERT_BYTES) -> tuple[str, str]:
    """A leaf of about `size` bytes (DER), signed by the suite's CA: tens of thousands of SANs."""
    ca_key = serialization.load_pem_private_key(ca.ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.ca.cert_pem.bytes())
    label = "a-rather-long-host-name-label-for-a-huge-certificate"
    count = size // (len(label) + 16) + 1
    sans: list[x509.GeneralName] = list(LOOPBACK_SANS)
    sans += [x509.DNSName(f"h{i:07d}.{label}.test") for i in range(count)]
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _leaf_extensions(_builder("localhost", ca_cert.subject, key.public_key()), sans)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_file, key_file = directory / "huge.pem", directory / "huge.key"
    cert_file.write_bytes(_pem(cert))
    key_file.write_bytes(_key_pem(key))
    return str(cert_file), str(key_file)


def build_material(directory: Path, ca: TestCA) -> Material:
    directory.mkdir(parents=True, exist_ok=True)
    chain_root, chain_cert, chain_key = write_chain(directory)
    huge_cert, huge_key = write_huge_certificate(directory, ca)
    return Material(
        ca_file=ca.ca_file,
        server_cert=ca.server_cert.cert_file,
        server_key=ca.server_cert.key_file,
        chain_root=chain_root,
        chain_cert=chain_cert,
        chain_key=chain_key,
        huge_cert=huge_cert,
        huge_key=huge_key,
    )
