"""The `modules` section: one table-driven spec per mapping of a module, checks across keys
in each spec's post-validation hook.

Reading a module's `tls_config` builds its SSL context (`ModulesDocument.client_contexts`),
so that its files are read once, at load, and a bad one is an error on its line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import ssl
from collections.abc import Mapping
from typing import Any

import yaml

from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.delivery import delivery_parser
from smtp_exporter.config.durations import format_duration, quote_value
from smtp_exporter.config.files import (
    credentials,
    load_client_context,
    readable_file,
)
from smtp_exporter.config.nodes import (
    Document,
    Parser,
    boolean,
    checked,
    choice,
    duration_upto,
    integer_in,
    join,
    one_of,
    pairs,
    section,
    sequence,
    string,
)
from smtp_exporter.config.posture import check_posture, parse_posture
from smtp_exporter.config.schema import (
    OAUTH_MECHANISMS,
    SMTPUTF8,
    AuthConfig,
    AuthMechanism,
    BodyType,
    Chunking,
    DNSConfig,
    ExpectConfig,
    IPProtocol,
    MessageConfig,
    ModuleConfig,
    MXFailover,
    Pipelining,
    StartTLS,
    TLSConfig,
)
from smtp_exporter.model import Transaction
from smtp_exporter.protocol import CommandError, validate_argument
from smtp_exporter.protocol.envelope import has_8bit_content
from smtp_exporter.targets import parse_nameserver
from smtp_exporter.tls_settings import TLS_VERSIONS

MAX_TIMEOUT = 300.0
MAX_DNS_TIMEOUT = 60.0
MAX_ATTEMPTS = 100  # connects per probe: enough for every address of every MX host kept

_MODULE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext
_EXTENSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# Headers build_message writes itself.
_GENERATED_HEADERS = frozenset({"date", "message-id", "from", "to", "subject", "x-smtp-exporter-probe"})


class ModulesDocument(Document):
    """A main config being loaded: also the SSL context built for each `tls_config` read."""

    __slots__ = ("broken_modules", "client_contexts")

    def __init__(self, source: str, base_dir: str | None) -> None:
        super().__init__(source, base_dir)
        self.client_contexts: dict[TLSConfig, ssl.SSLContext] = {}
        # The modules whose errors are in `errors`: what refers to them is not checked again.
        self.broken_modules: set[str] = set()


def uses_tls(module: ModuleConfig) -> bool:
    """Whether probes of `module` may speak TLS (and so need its SSL context)."""
    return module.implicit_tls or module.starttls is not StartTLS.NEVER


def tls_configs(module: ModuleConfig) -> tuple[TLSConfig, ...]:
    """The `tls_config` sections whose SSL contexts probes of `module` need: its own when it may
    speak TLS, and its delivery's IMAP one (which always does)."""
    own = (module.tls_config,) if uses_tls(module) else ()
    return own + ((module.delivery.imap.tls_config,) if module.delivery is not None else ())


# --- values -------------------------------------------------------------------------------------------


def _command_text(doc: Document, node: yaml.Node, path: str) -> str:
    """Text that goes into an SMTP command or header: no CR, LF or NUL (no command injection)."""
    text = string(doc, node, path)
    try:
        return validate_argument(text)
    except CommandError as exc:
        doc.fail(node, path, f"invalid value {quote_value(text)}: {exc}")


def _ehlo(doc: Document, node: yaml.Node, path: str) -> str:
    text = _command_text(doc, node, path)
    if not text or any(ch.isspace() for ch in text):
        doc.fail(
            node, path, f"invalid EHLO name {quote_value(text)}: must be a non-empty name without spaces"
        )
    return text


def _address(doc: Document, node: yaml.Node, path: str) -> str:
    text = _command_text(doc, node, path)
    if any(ch.isspace() or ch in "<>" for ch in text):
        doc.fail(node, path, f"invalid address {quote_value(text)}: write it bare, without spaces or <>")
    return text


def _recipients(doc: Document, node: yaml.Node, path: str) -> tuple[str, ...]:
    items = sequence(doc, node, path, single=True)
    if not items:
        doc.fail(node, path, "must name at least one recipient")
    result = []
    for item_path, item in items:
        address = _address(doc, item, item_path)
        if not address:
            doc.fail(item, item_path, "must not be empty")
        result.append(address)
    return tuple(result)


def _banner(doc: Document, node: yaml.Node, path: str) -> str:
    pattern = string(doc, node, path)
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        doc.fail(node, path, f"invalid regular expression {quote_value(pattern)}: {exc}")
    return pattern


def _extensions(doc: Document, node: yaml.Node, path: str) -> tuple[str, ...]:
    extensions = []
    for item_path, item in sequence(doc, node, path, single=True):
        word = string(doc, item, item_path)
        if not _EXTENSION_RE.fullmatch(word):
            doc.fail(item, item_path, f"invalid EHLO keyword {quote_value(word)}")
        extensions.append(word.upper())
    return tuple(extensions)


def _body(doc: Document, node: yaml.Node, path: str) -> str:
    body = string(doc, node, path)
    if "\x00" in body:
        doc.fail(node, path, "must not contain NUL")
    return body


def _headers(doc: Document, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for name, name_node, value in pairs(doc, node, path):
        if not _HEADER_NAME_RE.fullmatch(name):
            doc.fail(name_node, path, f"invalid header name {quote_value(name)}")
        if name.lower() in _GENERATED_HEADERS:
            doc.fail(
                name_node,
                path,
                f"header {quote_value(name)} is written by the exporter (set subject instead)",
            )
        headers.append((name, _command_text(doc, value, join(path, name))))
    return tuple(headers)


def _nameservers(doc: Document, node: yaml.Node, path: str) -> tuple[str, ...]:
    result = []
    for item_path, item in sequence(doc, node, path, single=True):
        text = string(doc, item, item_path).strip()
        try:
            parse_nameserver(text)
        except ValueError as exc:
            doc.fail(item, item_path, str(exc))
        result.append(text)
    return tuple(result)


def _source_address(doc: Document, node: yaml.Node, path: str) -> str:
    text = string(doc, node, path).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        doc.fail(node, path, f"invalid value {quote_value(text)}: must be an IPv4 or IPv6 address")


def _failover_on(doc: Document, node: yaml.Node, path: str) -> tuple[MXFailover, ...]:
    chosen = set()
    for item_path, item in sequence(doc, node, path, single=True):
        chosen.add(choice(doc, item, item_path, list(MXFailover)))
    return tuple(reason for reason in MXFailover if reason in chosen)


# --- tls_config and auth ------------------------------------------------------------------------------


def _check_tls(doc: Document, tls: TLSConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if (tls.cert_file is None) != (tls.key_file is None):
        present = "cert_file" if tls.cert_file is not None else "key_file"
        missing = "key_file" if tls.cert_file is not None else "cert_file"
        doc.fail(
            keys[present],
            join(path, present),
            f"{present} needs {missing} too (a client certificate and its key)",
        )
    context = load_client_context(doc, tls, keys, path)
    if isinstance(doc, ModulesDocument):
        doc.client_contexts.setdefault(tls, context)


_TLS: dict[str, Parser] = {
    "ca_file": readable_file,
    "cert_file": readable_file,
    "key_file": readable_file,
    "server_name": _ehlo,
    "insecure_skip_verify": boolean,
    "min_version": one_of(TLS_VERSIONS),
}
assert set(_TLS) == {field.name for field in dataclasses.fields(TLSConfig)}


def _tls_config(doc: Document, node: yaml.Node, path: str) -> TLSConfig:
    return section(doc, node, path, TLSConfig(), _TLS, _check_tls)


def _auth_secret(values: Mapping[str, Any]) -> tuple[str, str]:
    """An OAuth mechanism takes a token, every other one a password."""
    mechanism = values.get("mechanism", AuthMechanism.AUTO)
    if mechanism in OAUTH_MECHANISMS:
        return (
            "token",
            f"does not go with mechanism: {mechanism} (an OAuth mechanism takes token_file or token_env)",
        )
    return "password", "needs mechanism: XOAUTH2 or OAUTHBEARER"


def _check_auth(doc: Document, auth: AuthConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if auth.mechanism in OAUTH_MECHANISMS and "\x01" in auth.username:
        # XOAUTH2 and OAUTHBEARER separate their fields with %x01.
        doc.fail(keys["username"], join(path, "username"), "must not contain the control character U+0001")


_AUTH: dict[str, Parser] = {"mechanism": one_of(AuthMechanism), "username": _command_text}


def _auth(doc: Document, node: yaml.Node, path: str) -> AuthConfig:
    """The password from password_file or password_env, an OAuth mechanism's token from
    token_file or token_env (re-read at every probe); never from the file itself."""
    return credentials(doc, node, path, AuthConfig(), _AUTH, _check_auth, choose_secret=_auth_secret)


# --- the module ---------------------------------------------------------------------------------------


def _table(default: Any, parsers: dict[str, Parser]) -> Parser:
    return lambda doc, node, path: section(doc, node, path, default, parsers)


_MESSAGE: dict[str, Parser] = {"subject": _command_text, "body": _body, "headers": _headers}
_EXPECT: dict[str, Parser] = {"banner": _banner, "extensions": _extensions}
_DNS: dict[str, Parser] = {"nameservers": _nameservers, "timeout": duration_upto(MAX_DNS_TIMEOUT)}

_MODULE: dict[str, Parser] = {
    "port": integer_in(1, 65535),
    "timeout": duration_upto(MAX_TIMEOUT),
    "ehlo": _ehlo,
    "helo_fallback": boolean,
    "starttls": one_of(StartTLS),
    "implicit_tls": boolean,
    "tls_config": _tls_config,
    "auth": _auth,
    "transaction": one_of(Transaction),
    "mail_from": _address,
    "rcpt_to": _recipients,
    "message": _table(MessageConfig(), _MESSAGE),
    "expect": _table(ExpectConfig(), _EXPECT),
    "ip_protocol": one_of(IPProtocol),
    "mx": boolean,
    "connect_timeout": duration_upto(MAX_TIMEOUT),
    "max_attempts": integer_in(1, MAX_ATTEMPTS),
    "mx_failover_on": _failover_on,
    "source_ip_address": _source_address,
    "happy_eyeballs_delay": duration_upto(MAX_TIMEOUT, allow_zero=True),
    "dns": _table(DNSConfig(), _DNS),
    "fail_on_quit": boolean,
    "posture": parse_posture,
    "delivery": delivery_parser(_tls_config, _command_text, _address),
    "pipelining": one_of(Pipelining),
    "chunking": one_of(Chunking),
    "size_declaration": boolean,
    "body_type": one_of(BodyType),
    "smtputf8": one_of(SMTPUTF8),
    "requiretls": boolean,
}
assert set(_MODULE) == {field.name for field in dataclasses.fields(ModuleConfig)}


def _check_module(doc: Document, module: ModuleConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if module.implicit_tls and module.starttls is StartTLS.REQUIRED:
        doc.fail(
            keys["starttls"], join(path, "starttls"), "starttls: required contradicts implicit_tls: true"
        )
    if module.auth is not None and not (module.implicit_tls or module.starttls is StartTLS.REQUIRED):
        doc.fail(
            keys["auth"],
            join(path, "auth"),
            "auth needs an encrypted connection: set starttls: required or implicit_tls: true "
            "(otherwise a server that stops offering STARTTLS would receive the password in clear text)",
        )
    family = module.source_family
    wanted = {IPProtocol.IP4: 4, IPProtocol.IP6: 6}.get(module.ip_protocol)
    if family is not None and wanted is not None and family != wanted:
        doc.fail(
            keys["source_ip_address"],
            join(path, "source_ip_address"),
            f"an IPv{family} source contradicts ip_protocol: {module.ip_protocol}",
        )
    if family is not None and module.ip_protocol is IPProtocol.BOTH:
        doc.fail(
            keys["source_ip_address"],
            join(path, "source_ip_address"),
            f"an IPv{family} source contradicts ip_protocol: both (its IPv{10 - family} probe could never connect)",
        )
    if module.requiretls and module.starttls is StartTLS.NEVER and not module.implicit_tls:
        # With starttls: auto a server without STARTTLS fails the probe (expectation_failed),
        # as it fails a sender's REQUIRETLS message; with never no probe could ever pass.
        doc.fail(
            keys["requiretls"],
            join(path, "requiretls"),
            "REQUIRETLS is only sent over TLS, and starttls: never rules it out",
        )
    if module.transaction is Transaction.NONE:
        # Settings of the mail transaction, on a module that never starts one.
        for key, used in (
            ("pipelining", module.pipelining is Pipelining.REQUIRED),
            ("requiretls", module.requiretls),
        ):
            if used:
                doc.fail(keys[key], join(path, key), f"{key} needs transaction: envelope or message")
    if module.body_type is BodyType.SEVEN_BIT and has_8bit_content(module):
        doc.fail(
            keys["body_type"],
            join(path, "body_type"),
            "body_type: 7bit, but the message's addresses, subject, headers or body are not ASCII",
        )
    if module.delivery is not None and module.transaction is not Transaction.MESSAGE:
        doc.fail(
            keys["delivery"],
            join(path, "delivery"),
            "delivery needs transaction: message (the message it waits for in the mailbox)",
        )
    if module.connect_timeout is not None and module.connect_timeout > module.timeout:
        doc.fail(
            keys["connect_timeout"],
            join(path, "connect_timeout"),
            f"must not be longer than the module's timeout ({format_duration(module.timeout)})",
        )
    check_posture(doc, module, keys, path)


def parse_modules(doc: ModulesDocument, node: yaml.Node, path: str) -> dict[str, ModuleConfig]:
    """The built-in modules, and those of the file (which replace built-ins of the same name).
    A module with an error has it kept in `doc.errors`, and a placeholder under its name in
    `doc.broken_modules`, so that the other modules are checked too."""
    modules = dict(BUILTIN_MODULES)
    for name, name_node, value in pairs(doc, node, path):
        if not _MODULE_NAME_RE.fullmatch(name):
            doc.errors.append(
                doc.error(
                    name_node,
                    path,
                    f"invalid module name {quote_value(name)}: use letters, digits, _, . and - (at most 128)",
                )
            )
            ok = False
        else:
            modules[name], ok = checked(
                doc,
                ModuleConfig(),
                section,
                doc,
                value,
                join(path, name),
                ModuleConfig(),
                _MODULE,
                _check_module,
            )
        if not ok:
            modules[name] = ModuleConfig()
            doc.broken_modules.add(name)
    return modules
