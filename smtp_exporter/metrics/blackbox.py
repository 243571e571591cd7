"""blackbox_exporter's names for what a probe measured, with blackbox's meaning and spelling.

Its users' alerts and dashboards (the blackbox-exporter-mixin's among them) keep working when
they point at this exporter: every `/probe` response carries these families, and a scheduled
series too with `metrics.blackbox_names: true`. The names, help texts, label names and label
values follow blackbox_exporter's prober/tls.go, prober/utils.go, prober/query_response.go and
prober/handler.go, with one deliberate difference: the certificate series are present when
verification failed (blackbox drops them with the handshake), because an expired certificate
must be alertable. See docs/migrating-from-blackbox.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from smtp_exporter.metrics.families import Family, Kind, Sample, bound
from smtp_exporter.model import FailureReason, Phase, ProbeResult


def _g(name: str, help_text: str) -> Family:
    # blackbox declares its *_info series as plain gauges, and so they are declared here.
    return Family(name, Kind.GAUGE, help_text)


PROBE_SUCCESS = _g("probe_success", "Displays whether or not the probe was a success")
PROBE_DURATION = _g("probe_duration_seconds", "Returns how long the probe took to complete in seconds")
DNS_LOOKUP_TIME = _g(
    "probe_dns_lookup_time_seconds", "Returns the time taken for probe dns lookup in seconds"
)
IP_PROTOCOL = _g("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6")
IP_ADDR_HASH = _g(
    "probe_ip_addr_hash", "Specifies the hash of IP address. It's useful to detect if the IP address changes."
)
FAILED_DUE_TO_REGEX = _g("probe_failed_due_to_regex", "Indicates if probe failed due to regex")
SSL_EARLIEST_CERT_EXPIRY = _g("probe_ssl_earliest_cert_expiry", "Returns last SSL chain expiry in unixtime")
SSL_LAST_CHAIN_EXPIRY = _g(
    "probe_ssl_last_chain_expiry_timestamp_seconds", "Returns last SSL chain expiry in timestamp"
)
SSL_LAST_CHAIN_INFO = _g("probe_ssl_last_chain_info", "Contains SSL leaf certificate information")
TLS_VERSION = _g("probe_tls_version_info", "Returns the TLS version used or NaN when unknown")
TLS_CIPHER = _g("probe_tls_cipher_info", "Returns the TLS cipher negotiated during handshake")

# In exposition order, after this exporter's own families.
BLACKBOX_FAMILIES: tuple[Family, ...] = (
    PROBE_SUCCESS,
    PROBE_DURATION,
    DNS_LOOKUP_TIME,
    IP_PROTOCOL,
    IP_ADDR_HASH,
    FAILED_DUE_TO_REGEX,
    SSL_EARLIEST_CERT_EXPIRY,
    SSL_LAST_CHAIN_EXPIRY,
    SSL_LAST_CHAIN_INFO,
    TLS_VERSION,
    TLS_CIPHER,
)

# Go's getTLSVersion: OpenSSL's spelling -> blackbox's.
_TLS_VERSIONS = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}

# Go's tls.CipherSuiteName for the suites OpenSSL names otherwise: the IANA name of every suite Go
# knows, and Go's "0x%04X" for the DHE suites it does not (TLS 1.3's names are the same in both).
_CIPHERS = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "ECDHE-RSA-AES128-SHA": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "ECDHE-ECDSA-AES256-SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "ECDHE-RSA-AES256-SHA": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-DES-CBC3-SHA": "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "ECDHE-ECDSA-RC4-SHA": "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "ECDHE-RSA-RC4-SHA": "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "AES128-SHA": "TLS_RSA_WITH_AES_128_CBC_SHA",
    "AES256-SHA": "TLS_RSA_WITH_AES_256_CBC_SHA",
    "AES128-SHA256": "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "DES-CBC3-SHA": "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "RC4-SHA": "TLS_RSA_WITH_RC4_128_SHA",
    "DHE-RSA-AES128-GCM-SHA256": "0x009E",
    "DHE-RSA-AES256-GCM-SHA384": "0x009F",
    "DHE-RSA-CHACHA20-POLY1305": "0xCCAA",
}


def tls_version_name(version: str) -> str:
    """A TLS version as blackbox spells it ("TLS 1.3"), "unknown" for others (as Go's)."""
    return _TLS_VERSIONS.get(version, "unknown")


def cipher_name(cipher: str) -> str:
    """A cipher suite as Go's tls.CipherSuiteName spells it (an unlisted one: OpenSSL's name)."""
    return _CIPHERS.get(cipher, cipher)


def ip_addr_hash(ip: str) -> int:
    """blackbox's ipHash: FNV-1a (32 bits) of the address's bytes, 4 for IPv4 (an IPv4-mapped
    IPv6 address included, as Go's To4 gives) and 16 for IPv6."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])  # a zone is not part of Go's net.IP
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    digest = 0x811C9DC5
    for byte in address.packed:
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest


def blackbox_samples(result: ProbeResult) -> Iterator[Sample]:
    """blackbox_exporter's samples of one probe result, in BLACKBOX_FAMILIES order.

    As blackbox's tcp prober: the DNS, IP and regex series always (0 for what did not happen),
    the TLS ones when TLS was negotiated, the certificate ones when a certificate came.
    """
    yield PROBE_SUCCESS, "", 1 if result.success else 0
    yield PROBE_DURATION, "", result.duration_seconds
    resolve = result.phase(Phase.RESOLVE)
    yield DNS_LOOKUP_TIME, "", resolve.duration_seconds if resolve is not None else 0
    # blackbox sets these once it resolved, before connecting: a connect that failed keeps them.
    address = result.address
    ip, family = (address.ip, address.family) if address is not None else (None, 0)
    if address is None and result.attempts:
        ip, family = result.attempts[0].address, result.attempts[0].family
    yield IP_PROTOCOL, "", family
    yield IP_ADDR_HASH, "", ip_addr_hash(ip) if ip is not None else 0
    failure = result.failure
    regex = failure is not None and failure.reason is FailureReason.EXPECTATION_FAILED
    yield FAILED_DUE_TO_REGEX, "", 1 if regex else 0
    tls = result.tls
    if tls is None:
        return
    if tls.chain_not_after_timestamp is not None:
        yield SSL_EARLIEST_CERT_EXPIRY, "", int(tls.chain_not_after_timestamp)
    if tls.last_chain_not_after_timestamp is not None:
        yield SSL_LAST_CHAIN_EXPIRY, "", int(tls.last_chain_not_after_timestamp)
    if tls.fingerprint_sha256 is not None:
        yield (
            SSL_LAST_CHAIN_INFO,
            f'fingerprint_sha256="{bound(tls.fingerprint_sha256)}",subject="{bound(tls.subject_dn or "")}",'
            f'issuer="{bound(tls.issuer_dn or "")}",subjectalternative="{bound(",".join(tls.dns_names))}"',
            1,
        )
    yield TLS_VERSION, f'version="{tls_version_name(tls.version)}"', 1
    yield TLS_CIPHER, f'cipher="{bound(cipher_name(tls.cipher))}"', 1
