"""Load, validate and render the config file.

The YAML is composed into nodes (never constructed into Python objects) and walked
against the schema, so that every error names the file, the line of the offending key
or value, and its key path, on one line:

    /etc/smtp.yml:12: modules.foo.timeout: invalid duration "10x": ...

Defaults come from the dataclasses of `config.schema` only: each section starts from its
dataclass' defaults and takes what the file says. Nothing here touches the network
(`ehlo: null` means "this host's FQDN", found once by the engine, not here).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import ssl
import stat
import sys
from collections.abc import Callable, Collection
from typing import Any, NoReturn, TypeVar

import yaml

from smtp_exporter.config.allowlist import parse_allow_entry
from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.durations import format_duration, parse_duration, quote_value
from smtp_exporter.config.schema import (
    AuthConfig,
    AuthMechanism,
    Config,
    DefaultsConfig,
    DNSConfig,
    ExpectConfig,
    HttpProbeConfig,
    IPProtocol,
    MessageConfig,
    MetricsConfig,
    ModuleConfig,
    MXMode,
    SchedulerConfig,
    Secret,
    ShardConfig,
    StartTLS,
    TargetConfig,
    TLSConfig,
)
from smtp_exporter.model import Transaction
from smtp_exporter.protocol import CommandError, validate_argument
from smtp_exporter.targets import TargetError, parse_target

__all__ = ["ConfigError", "default_config", "effective_config_yaml", "load_config", "load_config_text"]

MAX_TARGETS = 100_000
MAX_CONFIG_BYTES = 64 << 20  # 100,000 targets with labels fit in a fraction of it
MAX_INTERVAL = 86400.0
MAX_TIMEOUT = 300.0
MAX_DNS_TIMEOUT = 60.0
MAX_GRACE_PERIOD = 3600.0
MAX_CONCURRENCY = 100_000
MAX_BUCKETS = 100
MAX_HISTORY = 100_000
MAX_SECRET_BYTES = 64 * 1024
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")

# Labels the exporter sets itself (and the ones Prometheus adds): a target label with one of
# these names would collide with them.
RESERVED_LABELS = frozenset(
    {
        "target",
        "module",
        "mx_host",
        "phase",
        "reason",
        "status",
        "version",
        "cipher",
        "subject",
        "issuer",
        "fingerprint_sha256",
        "extension",
        "preference",
        "le",
        "quantile",
        "instance",
        "job",
        "python_version",
    }
)
# Headers build_message writes itself.
_GENERATED_HEADERS = frozenset({"date", "message-id", "from", "to", "subject"})

_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MODULE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext
_EXTENSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_INT_RE = re.compile(r"[-+]?[0-9][0-9_]*")

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# libyaml is several times faster on large target lists; both report the same marks.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The config used when no --config.file is given: a sidecar next to a local mail server.
DEFAULT_CONFIG_TEXT = """\
targets:
  - target: localhost:25
    module: smtp_handshake
    interval: 30s
"""


class ConfigError(Exception):
    """A config that cannot be used; `str()` is one line: `FILE:LINE: KEY.PATH: message`."""

    def __init__(self, file: str, message: str, *, line: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.path = path
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return _one_line(": ".join(part for part in (where, self.path, self.message) if part))


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def load_config(path: str) -> Config:
    """Read and validate the config file at `path`; relative paths in it are relative to its directory."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, f"config file larger than {MAX_CONFIG_BYTES >> 20} MiB: shard it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(path, "invalid YAML: not valid UTF-8", line=line) from None
    return load_config_text(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def load_config_text(text: str, *, source: str, base_dir: str | None = None) -> Config:
    """Validate config `text`; `source` names it in errors, `base_dir` anchors relative file paths."""
    doc = _Doc(source, base_dir)
    root = compose_yaml(text, source)
    return _config(doc, root)


def default_config() -> Config:
    """The embedded config: the built-in modules and `localhost:25` probed every 30s."""
    return load_config_text(DEFAULT_CONFIG_TEXT, source="<built-in>")


MAX_NESTING = 64  # a config nests 5 levels deep; libyaml's composer recurses without a limit


def _check_shape(text: str, source: str) -> None:
    """Refuse, before building any node, what would be costly or fatal to build: nesting deeper
    than MAX_NESTING (libyaml's C composer recurses once per level, and a few tens of thousands
    of `[` crash the process; its event parser does not recurse) and more than MAX_TARGETS
    targets (a reload runs beside the probes: stop before the tree of a huge file exists)."""
    depth = 0
    top_key: str | None = None
    expect_key = True
    in_targets = False
    targets = 0
    targets_line: int | None = None
    for event in yaml.parse(text, Loader=_Loader):
        node_event = isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent))
        if node_event and depth == 1:  # a key or a value of the top-level mapping
            if expect_key:
                top_key = event.value if isinstance(event, yaml.ScalarEvent) else None
            else:
                in_targets = top_key == "targets" and isinstance(event, yaml.SequenceStartEvent)
                targets_line = _line(event)
            expect_key = not expect_key
        elif node_event and depth == 2 and in_targets:
            targets += 1
            if targets > MAX_TARGETS:
                raise ConfigError(
                    source,
                    f"too many targets (more than {MAX_TARGETS}: shard them with shard.count)",
                    line=targets_line,
                    path="targets",
                )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(
                    source, f"invalid YAML: nested more than {MAX_NESTING} levels deep", line=_line(event)
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            if depth == 1:
                in_targets = False


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark else None


def compose_yaml(text: str, source: str) -> yaml.Node | None:
    """The node tree of a one-document YAML text, or None when it is empty."""
    try:
        _check_shape(text, source)
        node: yaml.Node | None = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "syntax error"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(source, f"invalid YAML: {problem}", line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        raise ConfigError(
            source, f"invalid YAML: unacceptable character #x{char:04x}: {exc.reason}", line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, "invalid YAML: nested too deeply") from None
    return node


# --- walking nodes -------------------------------------------------------------------------------------


class _Doc:
    """The document being loaded: where it came from, for messages and relative paths."""

    __slots__ = ("base_dir", "source")

    def __init__(self, source: str, base_dir: str | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, node: yaml.Node | int | None, path: str, message: str) -> NoReturn:
        line = node if isinstance(node, int) or node is None else node.start_mark.line + 1
        raise ConfigError(self.source, message, line=line, path=path)

    def path(self, value: str) -> str:
        if self.base_dir and not os.path.isabs(value):
            return os.path.normpath(os.path.join(self.base_dir, value))
        return value


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        _NULL_TAG: "empty",
        _BOOL_TAG: "a boolean",
        _INT_TAG: "a number",
        _FLOAT_TAG: "a number",
    }.get(node.tag, "a string")


def pairs(doc: _Doc, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """The (key, key node, value node) of a mapping; duplicate and non-string keys are errors."""
    if _is_null(node):
        return []
    if not isinstance(node, yaml.MappingNode):
        doc.fail(node, path, f"must be a mapping, not {_kind(node)}")
    seen: dict[str, int] = {}
    result: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            doc.fail(key_node, path, "merge keys (<<) are not supported")
        if not isinstance(key_node, yaml.ScalarNode) or _is_null(key_node) or key_node.value == "":
            doc.fail(key_node, path, "keys must be non-empty strings")
        key = key_node.value
        if key in seen:
            doc.fail(
                key_node, _join(path, key), f"duplicate key {quote_value(key)} (first at line {seen[key]})"
            )
        seen[key] = line_of(key_node)
        result.append((key, key_node, value_node))
    return result


def fields(
    doc: _Doc, node: yaml.Node, path: str, allowed: Collection[str]
) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """The pairs of a fixed-schema mapping, unknown keys refused; an empty value means the default."""
    result = []
    for key, key_node, value_node in pairs(doc, node, path):
        if key not in allowed:
            doc.fail(key_node, path, f"unknown key {quote_value(key)}{_suggest(key, allowed)}")
        if not _is_null(value_node):
            result.append((key, key_node, value_node))
    return result


def _suggest(key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def scalar(doc: _Doc, node: yaml.Node, path: str, what: str) -> yaml.ScalarNode:
    if not isinstance(node, yaml.ScalarNode) or _is_null(node):
        doc.fail(node, path, f"must be {what}, not {_kind(node)}")
    return node


def string(doc: _Doc, node: yaml.Node, path: str) -> str:
    """Any scalar's text as written (so `username: 0123` stays `0123`)."""
    return str(scalar(doc, node, path, "a string").value)


def boolean(doc: _Doc, node: yaml.Node, path: str) -> bool:
    value = scalar(doc, node, path, "true or false")
    if value.tag != _BOOL_TAG:
        doc.fail(node, path, f"must be true or false, not {quote_value(value.value)}")
    return str(value.value).lower() in ("true", "yes", "on", "y")


def integer(doc: _Doc, node: yaml.Node, path: str, low: int, high: int) -> int:
    text = str(scalar(doc, node, path, "an integer").value)
    if node.tag != _INT_TAG or not _INT_RE.fullmatch(text):
        doc.fail(node, path, f"must be an integer, not {quote_value(text)}")
    number = int(text.replace("_", ""))
    if not low <= number <= high:
        doc.fail(node, path, f"must be between {low} and {high}, not {number}")
    return number


def duration(doc: _Doc, node: yaml.Node, path: str, maximum: float, *, allow_zero: bool = False) -> float:
    text = str(scalar(doc, node, path, "a duration").value)
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        doc.fail(node, path, str(exc))
    if seconds == 0 and not allow_zero:
        doc.fail(node, path, "must be greater than 0")
    if seconds > maximum:
        doc.fail(node, path, f"must be at most {format_duration(maximum)}, not {text}")
    return seconds


_E = TypeVar("_E", bound=Any)


def choice(doc: _Doc, node: yaml.Node, path: str, allowed: Collection[_E]) -> _E:
    text = string(doc, node, path)
    for option in allowed:
        if str(option) == text:
            return option
    names = ", ".join(str(option) for option in allowed)
    doc.fail(node, path, f"invalid value {quote_value(text)}: must be one of {names}")


def sequence(doc: _Doc, node: yaml.Node, path: str, *, single: bool = False) -> list[tuple[str, yaml.Node]]:
    """Items of a list (with their paths); with `single`, one scalar stands for a list of one."""
    if single and isinstance(node, yaml.ScalarNode) and not _is_null(node):
        return [(path, node)]
    if not isinstance(node, yaml.SequenceNode):
        doc.fail(node, path, f"must be a list, not {_kind(node)}")
    return [(f"{path}[{index}]", item) for index, item in enumerate(node.value)]


def readable_file(doc: _Doc, node: yaml.Node, path: str) -> str:
    """A path (resolved against the config's directory) to a regular file we can read now."""
    name = doc.path(string(doc, node, path))
    try:
        info = os.stat(name)
        if not stat.S_ISREG(info.st_mode):
            doc.fail(node, path, f"{quote_value(name)} is not a regular file")
        with open(name, "rb") as file:
            file.read(1)
    except OSError as exc:
        doc.fail(node, path, f"cannot read {quote_value(name)}: {exc.strerror or exc}")
    return name


def read_secret_file(doc: _Doc, node: yaml.Node, path: str) -> tuple[str, Secret]:
    """The path and the content (one trailing newline stripped) of a secret file. Never shows the content."""
    name = readable_file(doc, node, path)
    try:
        with open(name, "rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        doc.fail(node, path, f"cannot read {quote_value(name)}: {exc.strerror or exc}")
    if len(data) > MAX_SECRET_BYTES:
        doc.fail(node, path, f"{quote_value(name)} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        doc.fail(node, path, f"{quote_value(name)} is not valid UTF-8")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        doc.fail(node, path, f"{quote_value(name)} is empty")
    return name, Secret(text)


# --- sections -----------------------------------------------------------------------------------------

_Parser = Callable[[_Doc, yaml.Node, str], Any]


def _command_text(doc: _Doc, node: yaml.Node, path: str) -> str:
    """Text that goes into an SMTP command or header: no CR, LF or NUL (no command injection)."""
    text = string(doc, node, path)
    try:
        return validate_argument(text)
    except CommandError as exc:
        doc.fail(node, path, f"invalid value {quote_value(text)}: {exc}")


def _ehlo(doc: _Doc, node: yaml.Node, path: str) -> str:
    text = _command_text(doc, node, path)
    if not text or any(ch.isspace() for ch in text):
        doc.fail(
            node, path, f"invalid EHLO name {quote_value(text)}: must be a non-empty name without spaces"
        )
    return text


def _address(doc: _Doc, node: yaml.Node, path: str) -> str:
    text = _command_text(doc, node, path)
    if any(ch.isspace() or ch in "<>" for ch in text):
        doc.fail(node, path, f"invalid address {quote_value(text)}: write it bare, without spaces or <>")
    return text


def _recipients(doc: _Doc, node: yaml.Node, path: str) -> tuple[str, ...]:
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


def _tls_config(doc: _Doc, node: yaml.Node, path: str) -> TLSConfig:
    values: dict[str, Any] = {}
    lines: dict[str, yaml.Node] = {}
    keys = [field.name for field in dataclasses.fields(TLSConfig)]
    for key, key_node, value in fields(doc, node, path, keys):
        sub = _join(path, key)
        lines[key] = key_node
        if key in ("ca_file", "cert_file", "key_file"):
            values[key] = readable_file(doc, value, sub)
        elif key == "server_name":
            values[key] = _ehlo(doc, value, sub)
        elif key == "insecure_skip_verify":
            values[key] = boolean(doc, value, sub)
        else:
            values[key] = choice(doc, value, sub, TLS_VERSIONS)
    tls = dataclasses.replace(TLSConfig(), **values)
    if (tls.cert_file is None) != (tls.key_file is None):
        present = "cert_file" if tls.cert_file is not None else "key_file"
        missing = "key_file" if tls.cert_file is not None else "cert_file"
        doc.fail(
            lines[present],
            _join(path, present),
            f"{present} needs {missing} too (a client certificate and its key)",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            doc.fail(
                lines["ca_file"],
                _join(path, "ca_file"),
                f"cannot load CA certificates from {quote_value(tls.ca_file)}: {ssl_reason(exc)}",
            )
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        except (ssl.SSLError, ValueError) as exc:
            doc.fail(
                lines["cert_file"],
                _join(path, "cert_file"),
                f"cannot load certificate and key: {ssl_reason(exc)}",
            )
    return tls


def _no_password() -> bytes:
    """Refuse encrypted keys instead of letting OpenSSL prompt on the terminal."""
    raise ValueError("the key is encrypted (a passphrase-protected key cannot be used)")


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


def _auth(doc: _Doc, node: yaml.Node, path: str) -> AuthConfig:
    keys = [field.name for field in dataclasses.fields(AuthConfig) if field.name != "password"]
    for key, key_node, _ in pairs(doc, node, path):
        if key == "password":
            doc.fail(
                key_node,
                _join(path, key),
                "a password is not allowed in the config file: put it in a file (password_file) "
                "or an environment variable (password_env)",
            )
    values: dict[str, Any] = {}
    lines: dict[str, yaml.Node] = {}
    for key, key_node, value in fields(doc, node, path, keys):
        sub = _join(path, key)
        lines[key] = key_node
        if key == "mechanism":
            values[key] = choice(doc, value, sub, list(AuthMechanism))
        elif key == "username":
            values[key] = _command_text(doc, value, sub)
        elif key == "password_file":
            values[key], values["password"] = read_secret_file(doc, value, sub)
        else:
            # The name is not repeated in messages: it may be a password put in the wrong key.
            name = string(doc, value, sub)
            if not name or "=" in name or "\x00" in name:
                doc.fail(value, sub, "invalid environment variable name")
            secret = os.environ.get(name)
            if secret is None:
                doc.fail(value, sub, "the environment variable named here is not set")
            if not secret:
                doc.fail(value, sub, "the environment variable named here is empty")
            values[key], values["password"] = name, Secret(secret)
    if not values.get("username"):
        doc.fail(node, path, 'missing required key "username"')
    if "password_file" in values and "password_env" in values:
        doc.fail(lines["password_env"], path, "set password_file or password_env, not both")
    if "password" not in values:
        doc.fail(node, path, "missing password_file or password_env")
    return dataclasses.replace(AuthConfig(), **values)


def _message(doc: _Doc, node: yaml.Node, path: str) -> MessageConfig:
    values: dict[str, Any] = {}
    for key, _, value in fields(doc, node, path, ("subject", "body", "headers")):
        sub = _join(path, key)
        if key == "subject":
            values[key] = _command_text(doc, value, sub)
        elif key == "body":
            body = string(doc, value, sub)
            if "\x00" in body:
                doc.fail(value, sub, "must not contain NUL")
            values[key] = body
        else:
            headers = []
            for name, name_node, header_value in pairs(doc, value, sub):
                if not _HEADER_NAME_RE.fullmatch(name):
                    doc.fail(name_node, sub, f"invalid header name {quote_value(name)}")
                if name.lower() in _GENERATED_HEADERS:
                    doc.fail(
                        name_node,
                        sub,
                        f"header {quote_value(name)} is written by the exporter (set subject instead)",
                    )
                headers.append((name, _command_text(doc, header_value, _join(sub, name))))
            values[key] = tuple(headers)
    return dataclasses.replace(MessageConfig(), **values)


def _expect(doc: _Doc, node: yaml.Node, path: str) -> ExpectConfig:
    values: dict[str, Any] = {}
    for key, _, value in fields(doc, node, path, ("banner", "extensions")):
        sub = _join(path, key)
        if key == "banner":
            pattern = string(doc, value, sub)
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                doc.fail(value, sub, f"invalid regular expression {quote_value(pattern)}: {exc}")
            values[key] = pattern
        else:
            extensions = []
            for item_path, item in sequence(doc, value, sub, single=True):
                word = string(doc, item, item_path)
                if not _EXTENSION_RE.fullmatch(word):
                    doc.fail(item, item_path, f"invalid EHLO keyword {quote_value(word)}")
                extensions.append(word.upper())
            values[key] = tuple(extensions)
    return dataclasses.replace(ExpectConfig(), **values)


def _nameserver(doc: _Doc, node: yaml.Node, path: str) -> str:
    text = string(doc, node, path).strip()
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            host = ""
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
        if text.startswith("[") and address.version != 6:
            raise ValueError(host)
    except ValueError:
        doc.fail(
            node,
            path,
            f"invalid nameserver {quote_value(text)}: expected an IP address, IP:port or [IPv6]:port",
        )
    if port and (not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536):
        doc.fail(node, path, f"invalid port in nameserver {quote_value(text)}")
    return text


def _dns(doc: _Doc, node: yaml.Node, path: str) -> DNSConfig:
    values: dict[str, Any] = {}
    for key, _, value in fields(doc, node, path, ("nameservers", "timeout")):
        sub = _join(path, key)
        if key == "timeout":
            values[key] = duration(doc, value, sub, MAX_DNS_TIMEOUT)
        else:
            values[key] = tuple(
                _nameserver(doc, item, p) for p, item in sequence(doc, value, sub, single=True)
            )
    return dataclasses.replace(DNSConfig(), **values)


_MODULE_PARSERS: dict[str, _Parser] = {
    "port": lambda doc, node, path: integer(doc, node, path, 1, 65535),
    "timeout": lambda doc, node, path: duration(doc, node, path, MAX_TIMEOUT),
    "ehlo": _ehlo,
    "helo_fallback": boolean,
    "starttls": lambda doc, node, path: choice(doc, node, path, list(StartTLS)),
    "implicit_tls": boolean,
    "tls_config": _tls_config,
    "auth": _auth,
    "transaction": lambda doc, node, path: choice(doc, node, path, list(Transaction)),
    "mail_from": _address,
    "rcpt_to": _recipients,
    "message": _message,
    "expect": _expect,
    "ip_protocol": lambda doc, node, path: choice(doc, node, path, list(IPProtocol)),
    "mx": boolean,
    "dns": _dns,
    "fail_on_quit": boolean,
}
assert set(_MODULE_PARSERS) == {field.name for field in dataclasses.fields(ModuleConfig)}


def _module(doc: _Doc, node: yaml.Node, path: str) -> ModuleConfig:
    values: dict[str, Any] = {}
    lines: dict[str, yaml.Node] = {}
    for key, key_node, value in fields(doc, node, path, _MODULE_PARSERS):
        lines[key] = key_node
        values[key] = _MODULE_PARSERS[key](doc, value, _join(path, key))
    module = dataclasses.replace(ModuleConfig(), **values)
    if module.implicit_tls and module.starttls is StartTLS.REQUIRED:
        doc.fail(
            lines["starttls"], _join(path, "starttls"), "starttls: required contradicts implicit_tls: true"
        )
    if module.auth is not None and not (module.implicit_tls or module.starttls is StartTLS.REQUIRED):
        doc.fail(
            lines["auth"],
            _join(path, "auth"),
            "auth needs an encrypted connection: set starttls: required or implicit_tls: true "
            "(otherwise a server that stops offering STARTTLS would receive the password in clear text)",
        )
    return module


def _modules(doc: _Doc, node: yaml.Node, path: str) -> dict[str, ModuleConfig]:
    modules = dict(BUILTIN_MODULES)
    for name, name_node, value in pairs(doc, node, path):
        if not _MODULE_NAME_RE.fullmatch(name):
            doc.fail(
                name_node,
                path,
                f"invalid module name {quote_value(name)}: use letters, digits, _, . and - (at most 128)",
            )
        modules[name] = _module(doc, value, _join(path, name))  # replaces a built-in of that name
    return modules


def _defaults(doc: _Doc, node: yaml.Node, path: str, modules: dict[str, ModuleConfig]) -> DefaultsConfig:
    values: dict[str, Any] = {}
    for key, _, value in fields(doc, node, path, ("module", "interval")):
        sub = _join(path, key)
        if key == "interval":
            values[key] = duration(doc, value, sub, MAX_INTERVAL)
        else:
            values[key] = _module_name(doc, value, sub, modules)
    return dataclasses.replace(DefaultsConfig(), **values)


def _module_name(doc: _Doc, node: yaml.Node, path: str, modules: dict[str, ModuleConfig]) -> str:
    name = string(doc, node, path)
    if name not in modules:
        doc.fail(node, path, f"unknown module {quote_value(name)}{_suggest(name, modules)}")
    return name


def _labels(doc: _Doc, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
    labels = []
    for name, name_node, value in pairs(doc, node, path):
        if not _LABEL_NAME_RE.fullmatch(name):
            doc.fail(
                name_node, path, f"invalid label name {quote_value(name)}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if name.startswith("__"):
            doc.fail(
                name_node,
                path,
                f"invalid label name {quote_value(name)}: names starting with __ are reserved",
            )
        if name in RESERVED_LABELS:
            doc.fail(
                name_node, path, f"label {quote_value(name)} clashes with a label the exporter sets itself"
            )
        text = string(doc, value, _join(path, name))
        if not text:
            doc.fail(value, _join(path, name), "must not be empty (an empty label is no label in Prometheus)")
        # Label names and values repeat across targets: one shared copy of each, outside the tree.
        labels.append((sys.intern(_fresh(name)), sys.intern(_fresh(text))))
    return tuple(labels)


_TARGET_KEYS = ("target", "module", "interval", "labels", "mx_mode")


def _targets(
    doc: _Doc, node: yaml.Node, path: str, modules: dict[str, ModuleConfig], defaults: DefaultsConfig
) -> tuple[TargetConfig, ...]:
    items = sequence(doc, node, path)
    if len(items) > MAX_TARGETS:  # _check_shape stops most such files sooner; an alias gets here
        doc.fail(node, path, f"too many targets (more than {MAX_TARGETS}: shard them with shard.count)")
    seen: dict[tuple[str, str], int] = {}
    targets = []
    for item_path, item in items:
        if not isinstance(item, yaml.MappingNode):
            doc.fail(item, item_path, f"must be a mapping with a target key, not {_kind(item)}")
        entry = {
            key: (key_node, value) for key, key_node, value in fields(doc, item, item_path, _TARGET_KEYS)
        }
        if "target" not in entry:
            doc.fail(item, item_path, 'missing required key "target"')
        module_name = defaults.module
        if "module" in entry:
            module_name = _module_name(doc, entry["module"][1], _join(item_path, "module"), modules)
        module = modules[module_name]
        target_node = entry["target"][1]
        target_path = _join(item_path, "target")
        text = string(doc, target_node, target_path).strip()
        try:
            parsed = parse_target(text, module.port)
        except TargetError as exc:
            doc.fail(target_node, target_path, str(exc))
        if module.mx and (parsed.ip is not None or ":" in text):
            doc.fail(
                target_node,
                target_path,
                f"module {quote_value(module_name)} has mx: true, so the target must be a mail domain "
                f"without port, not {quote_value(text)}",
            )
        key = (parsed.host if module.mx else str(parsed), module_name)
        if key in seen:
            doc.fail(
                item,
                item_path,
                f"duplicate target {quote_value(text)} with module {quote_value(module_name)} "
                f"(also at line {seen[key]})",
            )
        seen[key] = line_of(item)
        interval = defaults.interval
        if "interval" in entry:
            interval = duration(doc, entry["interval"][1], _join(item_path, "interval"), MAX_INTERVAL)
        if module.timeout >= interval:
            doc.fail(
                item,
                item_path,
                f"the timeout {format_duration(module.timeout)} of module {quote_value(module_name)} must be "
                f"shorter than the interval {format_duration(interval)}",
            )
        mx_mode = MXMode.PRIMARY
        if "mx_mode" in entry:
            mode_node = entry["mx_mode"][1]
            mx_mode = choice(doc, mode_node, _join(item_path, "mx_mode"), list(MXMode))
            if mx_mode is MXMode.EACH and not module.mx:
                doc.fail(
                    mode_node,
                    _join(item_path, "mx_mode"),
                    f"mx_mode: each needs a module with mx: true ({quote_value(module_name)} has mx: false)",
                )
        labels = _labels(doc, entry["labels"][1], _join(item_path, "labels")) if "labels" in entry else ()
        targets.append(
            TargetConfig(
                target=_fresh(text),
                module=sys.intern(module_name),
                interval=interval,
                labels=labels,
                mx_mode=mx_mode,
                line=line_of(item),
            )
        )
    return tuple(targets)


def _fresh(text: str) -> str:
    """A copy of a string the YAML tree holds, for the config to keep. Left among the tree's
    nodes and marks, which are freed after loading, kept strings pin the allocator's memory
    they share: 10,000 targets left 3.0 KB per target resident (29 MB of arenas, 15 MB of it
    free), their copies 0.5 KB."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")


def _buckets(doc: _Doc, node: yaml.Node, path: str) -> tuple[float, ...]:
    items = sequence(doc, node, path)
    if not items:
        doc.fail(node, path, "must not be empty")
    if len(items) > MAX_BUCKETS:
        doc.fail(node, path, f"at most {MAX_BUCKETS} buckets (each is a series per target)")
    buckets: list[float] = []
    for item_path, item in items:
        text = str(scalar(doc, item, item_path, "a number").value)
        try:
            if item.tag == _BOOL_TAG:
                raise ValueError(text)
            bound = float(text.replace("_", ""))
        except ValueError:
            doc.fail(item, item_path, f"must be a number of seconds, not {quote_value(text)}")
        if not math.isfinite(bound) or bound <= 0:
            doc.fail(item, item_path, f"must be a positive number of seconds, not {text}")
        if buckets and bound <= buckets[-1]:
            doc.fail(item, item_path, f"buckets must be in increasing order ({text} after {buckets[-1]:g})")
        buckets.append(bound)
    return tuple(buckets)


def _section(doc: _Doc, node: yaml.Node, path: str, default: Any, parsers: dict[str, _Parser]) -> Any:
    values = {
        key: parsers[key](doc, value, _join(path, key)) for key, _, value in fields(doc, node, path, parsers)
    }
    return dataclasses.replace(default, **values)


def _allowed_target(doc: _Doc, node: yaml.Node, path: str) -> str:
    text = string(doc, node, path)
    try:
        parse_allow_entry(text)
    except ValueError as exc:
        doc.fail(node, path, str(exc))
    return text.strip()


_SCHEDULER_PARSERS: dict[str, _Parser] = {
    "max_concurrency": lambda doc, node, path: integer(doc, node, path, 1, MAX_CONCURRENCY),
    "shutdown_grace_period": lambda doc, node, path: duration(
        doc, node, path, MAX_GRACE_PERIOD, allow_zero=True
    ),
}
_METRICS_PARSERS: dict[str, _Parser] = {
    "histogram_buckets": _buckets,
    "phase_histograms": boolean,
    "history_limit": lambda doc, node, path: integer(doc, node, path, 0, MAX_HISTORY),
}
_HTTP_PROBE_PARSERS: dict[str, _Parser] = {
    "allowed_targets": lambda doc, node, path: tuple(
        _allowed_target(doc, item, item_path) for item_path, item in sequence(doc, node, path, single=True)
    ),
    "max_concurrent": lambda doc, node, path: integer(doc, node, path, 1, MAX_CONCURRENCY),
}
_TOP_LEVEL = ("modules", "defaults", "targets", "scheduler", "metrics", "http_probe", "shard")
assert set(_TOP_LEVEL) == {field.name for field in dataclasses.fields(Config)} - {"source"}


def _shard(doc: _Doc, node: yaml.Node, path: str) -> ShardConfig:
    entry = {key: value for key, _, value in fields(doc, node, path, ("count", "index"))}
    count = (
        integer(doc, entry["count"], "shard.count", 1, MAX_CONCURRENCY)
        if "count" in entry
        else ShardConfig().count
    )
    index = ShardConfig().index
    if "index" in entry:
        index = integer(doc, entry["index"], "shard.index", 0, MAX_CONCURRENCY)
        if index >= count:
            doc.fail(entry["index"], "shard.index", f"must be less than shard.count ({count}), not {index}")
    return ShardConfig(count=count, index=index)


def _config(doc: _Doc, root: yaml.Node | None) -> Config:
    if root is None:
        return Config(modules=dict(BUILTIN_MODULES), source=doc.source)
    if not isinstance(root, yaml.MappingNode):
        doc.fail(
            root,
            "",
            f"the top level must be a mapping of sections (modules, targets, ...), not {_kind(root)}",
        )
    sections = {key: value for key, _, value in fields(doc, root, "", _TOP_LEVEL)}
    modules = (
        _modules(doc, sections["modules"], "modules") if "modules" in sections else dict(BUILTIN_MODULES)
    )
    defaults = (
        _defaults(doc, sections["defaults"], "defaults", modules)
        if "defaults" in sections
        else DefaultsConfig()
    )
    targets = (
        _targets(doc, sections["targets"], "targets", modules, defaults) if "targets" in sections else ()
    )
    return Config(
        modules=modules,
        targets=targets,
        defaults=defaults,
        scheduler=_section(
            doc, sections.get("scheduler", _EMPTY), "scheduler", SchedulerConfig(), _SCHEDULER_PARSERS
        ),
        metrics=_section(doc, sections.get("metrics", _EMPTY), "metrics", MetricsConfig(), _METRICS_PARSERS),
        http_probe=_section(
            doc, sections.get("http_probe", _EMPTY), "http_probe", HttpProbeConfig(), _HTTP_PROBE_PARSERS
        ),
        shard=_shard(doc, sections.get("shard", _EMPTY), "shard"),
        source=doc.source,
    )


_EMPTY = yaml.ScalarNode(_NULL_TAG, "")


# --- the effective config ------------------------------------------------------------------------------


def effective_config_yaml(config: Config) -> str:
    """The config in effect, as YAML: every module with its defaults, secrets shown as `<secret>`."""
    document = {
        "modules": {name: _plain(module) for name, module in config.modules.items()},
        "defaults": _plain(config.defaults),
        "targets": [_plain(target) for target in config.targets],
        "scheduler": _plain(config.scheduler),
        "metrics": _plain(config.metrics),
        "http_probe": _plain(config.http_probe),
        "shard": _plain(config.shard),
    }
    return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False))


_DURATION_FIELDS = frozenset({"timeout", "interval", "shutdown_grace_period"})
_MAPPING_FIELDS = frozenset({"labels", "headers"})


def _plain(value: Any, name: str = "") -> Any:
    """`value` as plain YAML data (dicts, lists, str, numbers), with durations spelled as in the file."""
    if isinstance(value, Secret):
        return "<secret>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result = {}
        for field in dataclasses.fields(value):
            if field.name == "line":
                continue
            result[field.name] = _plain(getattr(value, field.name), field.name)
        return result
    if name in _DURATION_FIELDS and isinstance(value, float):
        return format_duration(value)
    if name in _MAPPING_FIELDS:
        return {key: item for key, item in value}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str):  # enums included
        return str(value.value) if hasattr(value, "value") else str(value)
    return value
