"""`--web.config.file`: TLS and basic auth for the exporter's own HTTP server.

The format is the Prometheus exporter-toolkit's, so one web config serves every exporter of
a fleet and `promtool check web-config` checks it. Errors are one-line `ConfigError`s like
the main config's. Relative file paths are relative to the web config's directory (as in
the exporter-toolkit).
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import yaml

from smtp_exporter.config.durations import quote_value
from smtp_exporter.config.files import readable_file
from smtp_exporter.config.nodes import Document, boolean, choice, fields, pairs, sequence, string
from smtp_exporter.config.yaml_source import compose_yaml, read_text
from smtp_exporter.tls_settings import CIPHER_SUITES, TLS_VERSIONS, TLSSettingsError, server_context

__all__ = [
    "ClientAuthType",
    "TLSServerConfig",
    "WebConfig",
    "build_server_ssl_context",
    "check_basic_auth",
    "load_web_config",
    "load_web_config_text",
]


class ClientAuthType(enum.StrEnum):
    NO_CLIENT_CERT = "NoClientCert"
    # Python's ssl cannot request a certificate without verifying it: the server then does not
    # ask for one, which accepts and refuses exactly the clients Go's RequestClientCert does.
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"  # refused at load: see _tls_server_config
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


# The only response headers the exporter-toolkit lets a web config set, with their allowed
# values where those are an enumeration.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_BCRYPT_RE = re.compile(r"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_AUTH_CACHE_SIZE = 1024
_BCRYPT_MAX_BYTES = 72  # bcrypt only ever uses the first 72 bytes of a password


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSServerConfig:
    cert_file: str
    key_file: str
    client_auth_type: ClientAuthType = ClientAuthType.NO_CLIENT_CERT
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()  # Go names; empty: OpenSSL's defaults


class _AuthCache:
    """Successful (user, sha256(password)) checks, so bcrypt does not run on every scrape."""

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._entries: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, bytes]) -> bool:
        with self._lock:
            return key in self._entries

    def add(self, key: tuple[str, bytes]) -> None:
        with self._lock:
            if len(self._entries) >= _AUTH_CACHE_SIZE:
                self._entries.clear()
            self._entries.add(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    tls: TLSServerConfig | None = None  # None: plain HTTP
    headers: tuple[tuple[str, str], ...] = ()  # added to every response
    basic_auth_users: dict[str, str] = field(default_factory=dict)  # username -> bcrypt hash
    source: str = ""
    _auth_cache: _AuthCache = field(default_factory=_AuthCache, repr=False, compare=False)

    @property
    def auth_required(self) -> bool:
        return bool(self.basic_auth_users)


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web config file; the files it names must be readable now."""
    text = read_text(path, "web config file")
    return load_web_config_text(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def load_web_config_text(text: str, *, source: str, base_dir: str | None = None) -> WebConfig:
    doc = Document(source, base_dir)
    root = compose_yaml(text, source)
    if root is None:
        return WebConfig(source=source)
    if not isinstance(root, yaml.MappingNode):
        doc.fail(root, "", "the top level must be a mapping")
    sections = {
        key: value
        for key, _, value in fields(
            doc, root, "", ("tls_server_config", "http_server_config", "basic_auth_users")
        )
    }
    tls = _tls_server_config(doc, sections["tls_server_config"]) if "tls_server_config" in sections else None
    headers = (
        _http_server_config(doc, sections["http_server_config"]) if "http_server_config" in sections else ()
    )
    users = _users(doc, sections["basic_auth_users"]) if "basic_auth_users" in sections else {}
    return WebConfig(tls=tls, headers=headers, basic_auth_users=users, source=source)


def _tls_server_config(doc: Document, node: yaml.Node) -> TLSServerConfig | None:
    path = "tls_server_config"
    keys = (
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "cipher_suites",
    )
    values: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}
    for key, _, value in fields(doc, node, path, keys):
        sub = f"{path}.{key}"
        nodes[key] = value
        if key in ("cert_file", "key_file", "client_ca_file"):
            values[key] = readable_file(doc, value, sub)
        elif key == "client_auth_type":
            values[key] = choice(doc, value, sub, list(ClientAuthType))
        elif key in ("min_version", "max_version"):
            values[key] = choice(doc, value, sub, list(TLS_VERSIONS))
        else:
            suites = []
            for item_path, item in sequence(doc, value, sub):
                name = string(doc, item, item_path)
                if name not in CIPHER_SUITES:
                    doc.fail(item, item_path, f"unknown cipher suite {quote_value(name)}")
                suites.append(name)
            values[key] = tuple(suites)
    if not values:
        return None  # an empty tls_server_config means plain HTTP, as in the exporter-toolkit
    for required in ("cert_file", "key_file"):
        if required not in values:
            doc.fail(node, path, f'missing required key "{required}"')
    auth = values.get("client_auth_type", ClientAuthType.NO_CLIENT_CERT)
    if auth is ClientAuthType.REQUIRE_ANY_CLIENT_CERT:
        doc.fail(
            nodes["client_auth_type"],
            f"{path}.client_auth_type",
            "RequireAnyClientCert is not supported (Python's ssl verifies every client certificate it "
            "asks for): use RequireAndVerifyClientCert with client_ca_file",
        )
    verifying = auth in (
        ClientAuthType.VERIFY_CLIENT_CERT_IF_GIVEN,
        ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT,
    )
    if verifying and "client_ca_file" not in values:
        doc.fail(nodes["client_auth_type"], f"{path}.client_auth_type", f"{auth} needs client_ca_file")
    if "client_ca_file" in values and not verifying:
        doc.fail(
            nodes["client_ca_file"],
            f"{path}.client_ca_file",
            "client CAs are configured without a client_auth_type that verifies them "
            "(VerifyClientCertIfGiven or RequireAndVerifyClientCert)",
        )
    config = TLSServerConfig(**values)
    if TLS_VERSIONS[config.min_version] > TLS_VERSIONS[config.max_version]:
        doc.fail(
            nodes["min_version"],
            f"{path}.min_version",
            f"{config.min_version} is above max_version {config.max_version}",
        )
    # Load everything now, so that a bad file is a config error at start, not a failed handshake later.
    try:
        _server_context(config)
    except TLSSettingsError as exc:
        message = {
            "cert_file": f"cannot load certificate and key: {exc.reason}",
            "client_ca_file": f"cannot load CA certificates: {exc.reason}",
        }.get(exc.setting, exc.reason)
        doc.fail(nodes[exc.setting], f"{path}.{exc.setting}", message)
    return config


def _http_server_config(doc: Document, node: yaml.Node) -> tuple[tuple[str, str], ...]:
    path = "http_server_config"
    headers: list[tuple[str, str]] = []
    for key, _, value in fields(doc, node, path, ("headers", "http2")):
        sub = f"{path}.{key}"
        if key == "http2":
            boolean(doc, value, sub)  # accepted for compatibility: this server speaks HTTP/1.1 only
            continue
        for name, name_node, header_value in pairs(doc, value, sub):
            if name not in _HEADERS:
                allowed = ", ".join(_HEADERS)
                doc.fail(
                    name_node, sub, f"header {quote_value(name)} can not be configured (allowed: {allowed})"
                )
            text = string(doc, header_value, f"{sub}.{name}")
            if any(ch in text for ch in "\r\n\x00"):
                doc.fail(header_value, f"{sub}.{name}", "must not contain CR, LF or NUL")
            if _HEADERS[name] and text not in _HEADERS[name]:
                doc.fail(
                    header_value,
                    f"{sub}.{name}",
                    f"invalid value {quote_value(text)}: must be one of {', '.join(_HEADERS[name])}",
                )
            headers.append((name, text))
    return tuple(headers)


def _users(doc: Document, node: yaml.Node) -> dict[str, str]:
    path = "basic_auth_users"
    users = {}
    for name, name_node, value in pairs(doc, node, path):
        if ":" in name or not name.isprintable():
            doc.fail(name_node, path, f"invalid username {quote_value(name)}: no colon or control characters")
        hashed = string(doc, value, f"{path}.{name}")
        if not _BCRYPT_RE.fullmatch(hashed):
            # The value is meant to be a hash, but may be a password pasted by mistake: never show it.
            doc.fail(
                value,
                f"{path}.{name}",
                "not a bcrypt hash (expected $2y$<cost>$ and 53 characters; generate one with "
                "htpasswd -nBC 10 \"\" | tr -d ':\\n')",
            )
        users[name] = hashed
    return users


def web_config_files(web: WebConfig) -> tuple[str, ...]:
    """The files a web config names: a change to any of them is picked up like a change to it."""
    tls = web.tls
    if tls is None:
        return ()
    return tuple(name for name in (tls.cert_file, tls.key_file, tls.client_ca_file) if name is not None)


def restart_needed(running: WebConfig, new: WebConfig) -> str | None:
    """What of `new` a running server cannot take (None: all of it can). The certificate, key
    and client CAs apply to new connections; TLS itself, the client-auth mode, the versions and
    the ciphers are fixed when the listener starts."""
    if (running.tls is None) != (new.tls is None):
        return "tls_server_config was added or removed"
    if running.tls is not None and new.tls is not None:
        for key in ("client_auth_type", "min_version", "max_version", "cipher_suites"):
            if getattr(running.tls, key) != getattr(new.tls, key):
                return f"tls_server_config.{key} changed"
    return None


def build_server_ssl_context(web: WebConfig) -> ssl.SSLContext | None:
    """The server-side SSL context for the web config, or None for plain HTTP; raises
    TLSSettingsError when its files no longer load."""
    return None if web.tls is None else _server_context(web.tls)


def _server_context(tls: TLSServerConfig) -> ssl.SSLContext:
    return server_context(
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        min_version=tls.min_version,
        max_version=tls.max_version,
        cipher_suites=tls.cipher_suites,
        client_ca_file=tls.client_ca_file,
        verify_mode={
            ClientAuthType.VERIFY_CLIENT_CERT_IF_GIVEN: ssl.CERT_OPTIONAL,
            ClientAuthType.REQUIRE_AND_VERIFY_CLIENT_CERT: ssl.CERT_REQUIRED,
        }.get(tls.client_auth_type, ssl.CERT_NONE),
    )


_decoys: dict[int, bytes] = {}


def _decoy_hash(cost: int) -> bytes:
    """A hash of a random password with the cost of the real ones, made once per cost."""
    if cost not in _decoys:
        _decoys[cost] = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(cost))
    return _decoys[cost]


def check_basic_auth(web: WebConfig, username: str, password: str) -> bool:
    """Whether `username`/`password` match the web config's users.

    bcrypt runs for unknown users too (against a fixed hash), so the time taken does not tell
    which usernames exist. It costs ~100 ms of CPU: call this from a worker thread, not the
    event loop. Successful checks are cached, so a scraper pays it once.
    """
    secret = password.encode("utf-8", "surrogatepass")
    key = (username, hashlib.sha256(secret).digest())
    if key in web._auth_cache:
        return True
    hashed = web.basic_auth_users.get(username)
    candidate = secret[:_BCRYPT_MAX_BYTES]
    if hashed is None:
        # Same work as for a known user, so the time taken does not tell whether a username exists.
        cost = max((int(h[4:6]) for h in web.basic_auth_users.values()), default=4)
        bcrypt.checkpw(candidate, _decoy_hash(cost))
        return False
    if not bcrypt.checkpw(candidate, hashed.encode("ascii")):
        return False
    web._auth_cache.add(key)
    return True
