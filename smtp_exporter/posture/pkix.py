"""The trust of MTA-STS (RFC 8461 sections 3.3 and 4.2): the system's CA store, or
`posture.ca_file` when set, for the policy fetch and for the MX certificates.

The policy fetch gets an `ssl.SSLContext` (OpenSSL's PKIX with host name checks). The MX
certificates were presented to the probe, whose own `tls_config` may trust other CAs or name
another host; they are checked again here, as presented, with cryptography's path builder:
a path from the leaf to a trusted root over the presented intermediates, every date, and the
MX host name among the leaf's subjectAltNames (RFC 6125 wildcards). Its web-PKI extension
profile is kept for the CAs; for the leaf only the subjectAltName is required, because private
CAs (`ca_file`, the tests' trustme) issue leaves the CA/Browser profile refuses (a critical
subjectAltName) that OpenSSL, and so every MTA, accepts.

Both are built with the config's other runtime objects (`probe/module.py`, once per CA file
at each load), not at every run: the system store is a few hundred certificates. A changed
`ca_file` reloads the config, as every file it names does; the system store is read at load.
"""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class Trust:
    context: ssl.SSLContext  # for the policy fetch
    store: Store | None  # for the presented chains; None when no CA could be read
    source: str  # in words, for reasons


def trust(ca_file: str | None) -> Trust:
    """The trust of `ca_file`, or of the system's CA store."""
    context = ssl.create_default_context(cafile=ca_file)
    source = ca_file or "the system's CA store"
    path = ca_file or ssl.get_default_verify_paths().cafile
    store: Store | None = None
    if path is not None:
        try:
            with open(path, "rb") as handle, warnings.catch_warnings():
                # A store holds old roots whose serials RFC 5280 no longer allows: not ours to fix.
                warnings.simplefilter("ignore")
                roots = x509.load_pem_x509_certificates(handle.read())
            store = Store(roots)
        except (OSError, ValueError):
            store = None
    return Trust(context, store, source)


def verify_chain(trust: Trust, chain: tuple[bytes, ...], host: str) -> str | None:
    """None when the presented `chain` (DER, leaf first) is PKIX-valid for `host` under `trust`,
    else why not, in words."""
    if not chain:
        return "no certificate was presented"
    if trust.store is None:
        return f"no CA certificate could be read from {trust.source}"
    return verify_path(trust.store, f"a CA of {trust.source}", chain, host)


def verify_path(store: Store, anchors: str, chain: tuple[bytes, ...], host: str) -> str | None:
    """None when `chain` has a valid path to a certificate of `store` (`anchors` names them in
    the error: "no path to <anchors>") and its leaf is for `host`. Also DANE-TA's check
    (posture/tlsa.py), whose store is the one certificate a TLSA record names."""
    if not chain:
        return "no certificate was presented"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            leaf, *intermediates = (x509.load_der_x509_certificate(der) for der in chain)
    except ValueError as exc:
        return f"unreadable certificate: {exc}"[:MAX_REASON_CHARS]
    leaf_policy = ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    try:
        verifier = (
            PolicyBuilder()
            .store(store)
            .extension_policies(ee_policy=leaf_policy, ca_policy=ExtensionPolicy.webpki_defaults_ca())
            .build_server_verifier(x509.DNSName(host))
        )
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        return _why(str(exc), host, anchors)
    except ValueError as exc:  # a host name cryptography refuses as a DNS name
        return f"{host} cannot be checked: {exc}"[:MAX_REASON_CHARS]
    return None


def _why(message: str, host: str, anchors: str) -> str:
    text = message.removeprefix("validation failed: ").split(" (encountered processing", 1)[0]
    if "no matching subjectAltName" in text:
        return f"the certificate is not for {host}"
    if "candidates exhausted" in text:
        return f"no path to {anchors} (or a certificate on it is expired or not yet valid)"
    return text[:MAX_REASON_CHARS]
