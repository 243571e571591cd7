"""blackbox_exporter's names on /probe and, under metrics.blackbox_names, on /metrics: the values
and label spellings of the real blackbox_exporter (run beside this exporter against the same
server, with docs/migrating-from-blackbox.md's two modules), and unit checks of the spellings."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from smtp_exporter.metrics.blackbox import cipher_name, ip_addr_hash, tls_version_name
from smtp_exporter.probe.x509_names import go_name_string
from tests.helpers import require_binary
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.tls import ServerCert
from tests.service.conftest import running_exporter

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DAY = datetime.timedelta(days=1)
COMPARED = (
    "probe_success",
    "probe_ip_protocol",
    "probe_ip_addr_hash",
    "probe_failed_due_to_regex",
    "probe_ssl_earliest_cert_expiry",
    "probe_ssl_last_chain_expiry_timestamp_seconds",
    "probe_ssl_last_chain_info",
    "probe_tls_version_info",
)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    not_after: datetime.datetime,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 30 * DAY)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


class Chain:
    """A root, an intermediate expiring in 20 days, a leaf with a many-attribute subject, and an
    unrelated expired certificate the server sends too (as servers sent Let's Encrypt's expired
    DST Root X3 cross-sign): the earliest expiry of the presented chain is that expired one, the
    last chain's is the intermediate's. Without `expired_extra`, the intermediate's is both."""

    def __init__(self, directory: Path, *, expired_extra: bool = True) -> None:
        root_key, mid_key, leaf_key, old_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
        root_name = _name((NameOID.COMMON_NAME, "Test Root"))
        mid_name = _name((NameOID.ORGANIZATION_NAME, "Test"), (NameOID.COMMON_NAME, "Test Intermediate"))
        self.leaf_subject = _name(
            (NameOID.COUNTRY_NAME, "DE"),
            (NameOID.ORGANIZATION_NAME, "Example, Inc"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "Mail"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "#Ops "),
            (NameOID.COMMON_NAME, "mail.test"),
            (NameOID.EMAIL_ADDRESS, "postmaster@mail.test"),
            (NameOID.DOMAIN_COMPONENT, "test"),
        )
        root = _cert(root_name, root_key, root_name, root_key, not_after=NOW + 3650 * DAY, ca=True)
        mid = _cert(mid_name, mid_key, root_name, root_key, not_after=NOW + 20 * DAY, ca=True)
        sans: list[x509.GeneralName] = [x509.DNSName("mail.test"), x509.DNSName("localhost")]
        leaf = _cert(
            self.leaf_subject, leaf_key, mid_name, mid_key, not_after=NOW + 60 * DAY, ca=False, sans=sans
        )
        old_name = _name((NameOID.COMMON_NAME, "Old Cross-sign"))
        old = _cert(old_name, old_key, old_name, old_key, not_after=NOW - 3 * DAY, ca=True)
        self.earliest = int((NOW - 3 * DAY if expired_extra else NOW + 20 * DAY).timestamp())
        self.last_chain = int((NOW + 20 * DAY).timestamp())
        pem = serialization.Encoding.PEM
        self.ca_file = directory / "root.pem"
        self.ca_file.write_bytes(root.public_bytes(pem))
        chain = b"".join(c.public_bytes(pem) for c in ((leaf, mid, old) if expired_extra else (leaf, mid)))
        key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (directory / "chain.pem").write_bytes(chain)
        (directory / "leaf.key").write_bytes(key_pem)
        self.server_cert = ServerCert(
            chain, key_pem, str(directory / "chain.pem"), str(directory / "leaf.key")
        )


BLACKBOX_MODULE = """modules:
  smtp_starttls:
    prober: tcp
    timeout: 5s
    tcp:
      query_response:
        - expect: "^220 ([^ ]+) ESMTP (.+)$"
        - send: "EHLO prober\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220"
        - starttls: true
        - send: "EHLO prober\\r"
        - expect: "^250-AUTH"
        - send: "QUIT\\r"
      tls_config:
        ca_file: {ca_file}
        server_name: mail.test
"""
OUR_MODULE = """modules:
  smtp_starttls:
    timeout: 5s
    ehlo: prober
    starttls: required
    expect:
      banner: "^[^ ]+ ESMTP .+$"
      extensions: [AUTH]
    tls_config:
      ca_file: {ca_file}
      server_name: mail.test
"""


@pytest.fixture
def blackbox(tmp_path: Path, unused_tcp_port: int) -> Iterator[Callable[[Path], int]]:
    """blackbox_exporter with a config; returns its port once it answers."""
    binary = require_binary("prometheus-blackbox-exporter")
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> int:
        args = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{unused_tcp_port}"]
        started.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/-/healthy", timeout=1):
                    return unused_tcp_port
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def _samples(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _helps(body: str) -> dict[str, str]:
    return {f.name: f.documentation for f in text_string_to_metric_families(body)}


def _get(port: int, query: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe?{query}", timeout=15) as response:
        return str(response.read().decode())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_probe_answers_as_blackbox_exporter_does(
    host: str,
    tmp_path: Path,
    write_config: Callable[[str], Path],
    smtp_server_factory: Callable[..., AiosmtpdServer],
    blackbox: Callable[[Path], int],
) -> None:
    chain = Chain(tmp_path)
    server = smtp_server_factory(host=host, starttls=chain.server_cert, auth_users={"u": "p"})
    target = server.target
    blackbox_config = tmp_path / "blackbox.yml"
    blackbox_config.write_text(BLACKBOX_MODULE.format(ca_file=chain.ca_file))
    port = await asyncio.to_thread(blackbox, blackbox_config)
    theirs_body = await asyncio.to_thread(_get, port, f"target={target}&module=smtp_starttls")
    async with running_exporter(write_config(OUR_MODULE.format(ca_file=chain.ca_file))) as running:
        status, ours_body = await running.get("/probe", params={"target": target, "module": "smtp_starttls"})
    assert status == 200
    theirs, ours = _samples(theirs_body), _samples(ours_body)
    assert theirs["probe_success"] == [({}, 1.0)], theirs_body
    for name in COMPARED:
        assert ours.get(name) == theirs.get(name), (
            f"{name}:\n ours {ours.get(name)}\n blackbox {theirs.get(name)}"
        )
    theirs_help, ours_help = _helps(theirs_body), _helps(ours_body)
    for name in COMPARED:
        assert ours_help[name] == theirs_help[name], name
    # And what they are: the expired extra certificate, the intermediate, Go's spelling.
    assert ours["probe_ssl_earliest_cert_expiry"] == [({}, chain.earliest)]
    assert ours["probe_ssl_last_chain_expiry_timestamp_seconds"] == [({}, chain.last_chain)]
    [(info, _)] = ours["probe_ssl_last_chain_info"]
    assert info["subject"] == (
        "CN=mail.test,OU=Mail+OU=\\#Ops\\ ,O=Example\\, Inc,C=DE,"
        "0.9.2342.19200300.100.1.25=#130474657374,1.2.840.113549.1.9.1=#0c14706f73746d6173746572406d61696c2e74657374"
    )
    assert (
        info["issuer"] == "CN=Test Intermediate,O=Test"
        and info["subjectalternative"] == "mail.test,localhost"
    )
    assert ours["probe_tls_version_info"] == [({"version": "TLS 1.3"}, 1.0)]


async def test_certificate_series_stay_when_verification_fails_and_scheduled_mode_has_them_on_request(
    tmp_path: Path,
    write_config: Callable[[str], Path],
    smtp_server_factory: Callable[..., AiosmtpdServer],
) -> None:
    """Verified against the system's CAs, which do not know the chain's root: the probe fails, the certificate series remain (the
    presented chain stands for the last chain); /metrics has the names only when asked."""
    chain = Chain(tmp_path)
    server = smtp_server_factory(starttls=chain.server_cert)
    text = (
        "metrics: {blackbox_names: %s}\n"
        "modules:\n  tls: {starttls: required, timeout: 900ms, tls_config: {server_name: mail.test}}\n"
        f"targets:\n  - {{target: '{server.target}', module: tls, interval: 1s}}\n"
    )
    async with running_exporter(write_config(text % "false")) as running:
        status, body = await running.get("/probe", params={"target": server.target, "module": "tls"})
        scraped = await running.wait_metric("smtp_probe_success", target=server.target)
    assert status == 200
    probe = _samples(body)
    assert probe["probe_success"] == [({}, 0.0)] and probe["smtp_probe_tls_cert_verified"] == [({}, 0.0)]
    assert probe["probe_ssl_earliest_cert_expiry"] == [({}, chain.earliest)]
    assert probe["probe_ssl_last_chain_expiry_timestamp_seconds"] == [({}, chain.earliest)]
    assert probe["probe_failed_due_to_regex"] == [({}, 0.0)]
    assert "probe_success" not in _samples(scraped)

    async with running_exporter(write_config(text % "true")) as running:
        scraped = await running.wait_metric("probe_success", target=server.target)
    series = _samples(scraped)
    labels = {"target": server.target, "module": "tls"}
    assert series["probe_success"] == [(labels, 0.0)]
    assert series["probe_ssl_earliest_cert_expiry"] == [(labels, chain.earliest)]
    assert series["probe_tls_version_info"] == [({**labels, "version": "TLS 1.3"}, 1.0)]
    assert series["probe_ip_protocol"] == [(labels, 4.0)]


def test_go_name_spelling() -> None:
    name = _name(
        (NameOID.COMMON_NAME, "first"),
        (NameOID.SERIAL_NUMBER, "42"),
        (NameOID.COMMON_NAME, " last"),
        (NameOID.LOCALITY_NAME, 'a+b;c<d>"e\\'),
        (NameOID.POSTAL_CODE, "10115"),
        (NameOID.STREET_ADDRESS, "Main St 1"),
        (NameOID.STATE_OR_PROVINCE_NAME, "Berlin"),
        (NameOID.USER_ID, "x" * 130),
    )
    assert go_name_string(name) == (
        "SERIALNUMBER=42,CN=\\ last,POSTALCODE=10115,STREET=Main St 1,"
        'L=a\\+b\\;c\\<d\\>\\"e\\\\,ST=Berlin,0.9.2342.19200300.100.1.1=#138182' + "78" * 130
    )
    # Go writes no CN when the last is empty, but an empty O (certificates can carry them).
    with pytest.warns(UserWarning):  # cryptography warns of what it would not write itself
        empty = [
            x509.NameAttribute(oid, "", _validate=False)
            for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)
        ]
    assert go_name_string(x509.Name(empty)) == "O="


def test_tls_version_cipher_and_address_hash_spellings() -> None:
    assert [tls_version_name(v) for v in ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "SSLv3")] == [
        "TLS 1.0",
        "TLS 1.1",
        "TLS 1.2",
        "TLS 1.3",
        "unknown",
    ]
    assert cipher_name("ECDHE-RSA-AES128-GCM-SHA256") == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert cipher_name("TLS_AES_128_GCM_SHA256") == "TLS_AES_128_GCM_SHA256"
    assert cipher_name("DHE-RSA-AES256-GCM-SHA384") == "0x009F"
    # The hash itself is compared with blackbox_exporter's above; Go hashes To4() of a mapped
    # address, and a zone is no part of net.IP.
    assert ip_addr_hash("::ffff:127.0.0.1") == ip_addr_hash("127.0.0.1")
    assert ip_addr_hash("fe80::1%eth0") == ip_addr_hash("fe80::1")
