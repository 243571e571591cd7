"""A test certificate authority (trustme) and the bad certificates TLS tests need.

`TestCA.ca_file` is the PEM path to give the probe module's `tls_config.ca_file`. Every
certificate is written to files too, so it can also be given to external programs.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The names a default server certificate is valid for.
DEFAULT_IDENTITIES = ("localhost", "mail.test", "127.0.0.1", "::1")

_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class ServerCert:
    """A certificate chain and its key, in memory and on disk."""

    cert_pem: bytes  # leaf first, then any intermediates
    key_pem: bytes
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting this certificate (TLS 1.2 or newer)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _write(directory: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> ServerCert:
    n = next(_counter)
    cert_file = directory / f"{stem}-{n}.crt"
    key_file = directory / f"{stem}-{n}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return ServerCert(cert_pem, key_pem, str(cert_file), str(key_file))


class TestCA:
    """A throw-away CA whose certificate is written to `ca_file`.

    `server_cert` is a valid certificate for localhost, mail.test, 127.0.0.1 and ::1;
    `issue()` makes others, and the named helpers make the broken ones.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="smtp-exporter tests")
        path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        self.ca_file = str(path)
        self.server_cert = self.issue()

    def issue(
        self,
        *identities: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> ServerCert:
        """A certificate signed by this CA for `identities` (default: DEFAULT_IDENTITIES)."""
        leaf = self.ca.issue_cert(
            *(identities or DEFAULT_IDENTITIES), not_before=not_before, not_after=not_after
        )
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return _write(self.directory, "server", chain, leaf.private_key_pem.bytes())

    def expired(self) -> ServerCert:
        """Valid for the usual names, but its notAfter was two days ago."""
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        return self.issue(not_before=now - 30 * day, not_after=now - 2 * day)

    def not_yet_valid(self) -> ServerCert:
        """Valid for the usual names, but only from two days from now."""
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        return self.issue(not_before=now + 2 * day, not_after=now + 30 * day)

    def wrong_host(self) -> ServerCert:
        """Signed by this CA, but only for wrong.example (not localhost, not 127.0.0.1)."""
        return self.issue("wrong.example")

    def self_signed(self, *identities: str) -> ServerCert:
        """A certificate for the usual names that signs itself (not signed by this CA)."""
        names = identities or DEFAULT_IDENTITIES
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return _write(self.directory, "selfsigned", cert.public_bytes(serialization.Encoding.PEM), key_pem)

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA."""
        return ssl.create_default_context(cafile=self.ca_file)
