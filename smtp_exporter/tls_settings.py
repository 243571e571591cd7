"""TLS settings: protocol versions, cipher names, and the SSL contexts built from them.

Used by the config loader (a module's `tls_config`: the probes' client context, built once
at load) and by the web config (`tls_server_config`: the exporter's own server context).
Building a context reads its certificate, key and CA files; what goes wrong is raised as a
`TLSSettingsError` naming the setting at fault, for the caller to place in its config file.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Sequence

from smtp_exporter.config.schema import TLSConfig

# The names the config files use (the Prometheus exporter-toolkit's) -> the ssl module's.
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's cipher suite names (crypto/tls, what the exporter-toolkit accepts) -> OpenSSL's.
# The TLS 1.3 suites are accepted and, as in Go, not configurable.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": "",
    "TLS_AES_256_GCM_SHA384": "",
    "TLS_CHACHA20_POLY1305_SHA256": "",
}


class TLSSettingsError(ValueError):
    """A setting that cannot be applied: `setting` is "ca_file", "cert_file" or "cipher_suites"."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(reason)
        self.setting = setting
        self.reason = reason


def ssl_reason(exc: Exception) -> str:
    """What went wrong loading a certificate, key or CA file, in words."""
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason == "KEY_VALUES_MISMATCH":
            return "the key does not belong to the certificate"
        if reason in ("PEM_LIB", "NO_START_LINE", ""):
            return "not valid PEM data"
        return reason.lower().replace("_", " ")
    return str(exc)


def _no_password() -> bytes:
    """Refuse encrypted keys instead of letting OpenSSL prompt on the terminal."""
    raise ValueError("the key is encrypted (a passphrase-protected key cannot be used)")


def _set_versions(context: ssl.SSLContext, minimum: str, maximum: str | None = None) -> None:
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated, and allowed only when asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = TLS_VERSIONS[minimum]
        if maximum is not None:
            context.maximum_version = TLS_VERSIONS[maximum]


def _load_cas(context: ssl.SSLContext, ca_file: str, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TLSSettingsError(setting, ssl_reason(exc)) from None


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except (OSError, ValueError) as exc:
        raise TLSSettingsError("cert_file", ssl_reason(exc)) from None


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """The probes' context for a module's `tls_config`: its CA file (or the system's CAs), its
    client certificate, its minimum version; TLSSettingsError when a file cannot be used."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TLSSettingsError("ca_file", ssl_reason(exc)) from None
    _set_versions(context, tls.min_version)
    if tls.cert_file is not None:
        _load_chain(context, tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def server_context(
    *,
    cert_file: str,
    key_file: str,
    min_version: str,
    max_version: str,
    cipher_suites: Sequence[str] = (),
    client_ca_file: str | None = None,
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE,
) -> ssl.SSLContext:
    """A server context; `cipher_suites` are Go names (keys of CIPHER_SUITES). TLSSettingsError
    ("cert_file", "client_ca_file" or "cipher_suites") when a setting cannot be applied."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _set_versions(context, min_version, max_version)
    _load_chain(context, cert_file, key_file)
    if client_ca_file is not None:
        _load_cas(context, client_ca_file, "client_ca_file")
    openssl_names = [CIPHER_SUITES[name] for name in cipher_suites if CIPHER_SUITES[name]]
    if openssl_names:
        try:
            context.set_ciphers(":".join(openssl_names))
        except ssl.SSLError:
            raise TLSSettingsError("cipher_suites", "none of these cipher suites is available") from None
    context.verify_mode = verify_mode
    return context
