"""The earliest expiry over the presented chain (smtp_probe_tls_chain_earliest_not_after_timestamp_seconds):
the leaf's is not enough when an intermediate expires first, and it is reported when verification
fails too. A real CA hierarchy (root, intermediate, leaf) built with cryptography, served by aiosmtpd."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtp_exporter.config.schema import ModuleConfig, StartTLS, TLSConfig
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.tls import ServerCert

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = (
        (name, key)
        if issuer is None
        else (
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]),
            issuer[1],
        )
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _hierarchy(directory: Path, intermediate_not_after: datetime.datetime) -> tuple[str, ServerCert]:
    """(the root's PEM file, a server chain leaf + intermediate); the leaf expires in 60 days."""
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("chain test root", root_key, None, NOW + 3650 * DAY, ca=True)
    mid = _cert(
        "chain test intermediate", mid_key, ("chain test root", root_key), intermediate_not_after, ca=True
    )
    leaf = _cert("localhost", leaf_key, ("chain test intermediate", mid_key), NOW + 60 * DAY, ca=False)
    pem = serialization.Encoding.PEM
    root_file = directory / "root.pem"
    root_file.write_bytes(root.public_bytes(pem))
    chain_file = directory / "chain.pem"
    chain_file.write_bytes(leaf.public_bytes(pem) + mid.public_bytes(pem))
    key_file = directory / "leaf.key"
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file.write_bytes(key_pem)
    return str(root_file), ServerCert(chain_file.read_bytes(), key_pem, str(chain_file), str(key_file))


def _tls_module(root: str, port: int) -> ModuleConfig:
    return module(
        port=port, starttls=StartTLS.REQUIRED, tls_config=TLSConfig(ca_file=root, server_name="localhost")
    )


async def test_an_intermediate_expiring_first_sets_the_chain_expiry(
    tmp_path: Path, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    root, chain = _hierarchy(tmp_path, NOW + 10 * DAY)
    server = smtp_server_factory(starttls=chain)
    result = await Prober().probe(*compiled("localhost", "m", _tls_module(root, server.port)))
    assert result.success, describe(result)
    assert result.tls is not None and result.tls.verified
    assert result.tls.cert_not_after_timestamp == (NOW + 60 * DAY).timestamp()
    assert result.tls.chain_not_after_timestamp == (NOW + 10 * DAY).timestamp()
    body = render_probe_result(result, openmetrics=False).decode()
    expected = (NOW + 10 * DAY).timestamp()
    assert f"smtp_probe_tls_chain_earliest_not_after_timestamp_seconds {expected!r}\n" in body
    document = json.loads(json.dumps(probe_json(result)))
    assert document["tls"]["chain_earliest_not_after_timestamp"] == expected
    assert "  presented chain expires " + (NOW + 10 * DAY).strftime("%Y-%m-%d %H:%M:%S UTC") in format_text(
        result
    )


async def test_the_chain_expiry_is_reported_when_verification_fails(
    tmp_path: Path, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    root, chain = _hierarchy(tmp_path, NOW - 2 * DAY)  # an expired intermediate: verification fails
    server = smtp_server_factory(starttls=chain)
    result = await Prober().probe(*compiled("localhost", "m", _tls_module(root, server.port)))
    assert result.failure is not None and result.failure.reason is FailureReason.TLS_CERT_INVALID, describe(
        result
    )
    assert result.tls is not None and not result.tls.verified
    assert result.tls.cert_not_after_timestamp == (NOW + 60 * DAY).timestamp()
    assert result.tls.chain_not_after_timestamp == (NOW - 2 * DAY).timestamp()


async def test_a_leaf_expiring_first_sets_it(
    tmp_path: Path, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    root, chain = _hierarchy(tmp_path, NOW + 100 * DAY)  # the intermediate outlives the leaf
    server = smtp_server_factory(starttls=chain)
    result = await Prober().probe(*compiled("localhost", "m", _tls_module(root, server.port)))
    assert result.success, describe(result)
    assert result.tls is not None
    assert (
        result.tls.chain_not_after_timestamp
        == result.tls.cert_not_after_timestamp
        == (NOW + 60 * DAY).timestamp()
    )
