"""The files and secrets a config names: certificates, keys, CAs, passwords, OAuth token files.

Everything here reads the file system or the environment, at load time only: a file is
checked (and a secret read) while its node is at hand, so that a problem is reported on the
line that names the file. Each file read is recorded in `Document.files`, for the service to
watch, except OAuth token files: they are re-read at every probe (credentials.py), and their
refresh must not reload the config.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import stat
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

from smtp_exporter.config.durations import quote_value
from smtp_exporter.config.nodes import Check, Document, Parser, fields, join, pairs, string
from smtp_exporter.config.schema import Secret, TLSConfig
from smtp_exporter.credentials import SecretError
from smtp_exporter.credentials import read_secret_env as _read_env
from smtp_exporter.credentials import read_secret_file as _read_file
from smtp_exporter.tls_settings import TLSSettingsError, client_context


def readable_file(doc: Document, node: yaml.Node, path: str, *, watched: bool = True) -> str:
    """A path (resolved against the document's directory) to a regular file we can read now;
    `watched`: recorded in `doc.files` (a change reloads the config)."""
    name = doc.path(string(doc, node, path))
    try:
        info = os.stat(name)
        if not stat.S_ISREG(info.st_mode):
            doc.fail(node, path, f"{quote_value(name)} is not a regular file")
        with open(name, "rb") as file:
            file.read(1)
    except OSError as exc:
        doc.fail(node, path, f"cannot read {quote_value(name)}: {exc.strerror or exc}")
    if watched and name not in doc.files:
        doc.files.append(name)
    return name


def token_file(doc: Document, node: yaml.Node, path: str) -> str:
    """An OAuth token file: it must exist now, and is read at every probe, not here."""
    return readable_file(doc, node, path, watched=False)


def read_secret_file(doc: Document, node: yaml.Node, path: str) -> tuple[str, Secret]:
    """The path and the content (one trailing newline stripped) of a secret file. Never shows the content."""
    name = readable_file(doc, node, path)
    try:
        return name, _read_file(name)
    except SecretError as exc:
        doc.fail(node, path, str(exc))


def read_secret_env(doc: Document, node: yaml.Node, path: str) -> tuple[str, Secret]:
    """The name and the value of the environment variable a node names."""
    # The name is not repeated in messages: it may be a password put in the wrong key.
    name = string(doc, node, path)
    if not name or "=" in name or "\x00" in name:
        doc.fail(node, path, "invalid environment variable name")
    try:
        return name, _read_env(name)
    except SecretError as exc:
        doc.fail(node, path, f"the environment variable named here {exc}")


def token_env(doc: Document, node: yaml.Node, path: str) -> str:
    """An OAuth token's environment variable: set now, and read at every probe, not kept here."""
    name, _ = read_secret_env(doc, node, path)
    return name


def load_client_context(
    doc: Document, tls: TLSConfig, keys: dict[str, yaml.Node], path: str
) -> ssl.SSLContext:
    """The probes' SSL context of a `tls_config` (`keys`: its key nodes), its files loaded now."""
    try:
        return client_context(tls)
    except TLSSettingsError as exc:
        if exc.setting == "ca_file":
            message = f"cannot load CA certificates from {quote_value(str(tls.ca_file))}: {exc.reason}"
        else:
            message = f"cannot load certificate and key: {exc.reason}"
        doc.fail(keys.get(exc.setting), join(path, exc.setting), message)


_C = TypeVar("_C")


# Given the values read so far: which secret the section takes ("password" or "token"), and
# what to say of a key of the other kind.
SecretChoice = Callable[[Mapping[str, Any]], tuple[str, str]]


def credentials(
    doc: Document,
    node: yaml.Node,
    path: str,
    default: _C,
    parsers: Mapping[str, Parser],
    check: Check[_C] | None = None,
    *,
    choose_secret: SecretChoice | None = None,
) -> _C:
    """A section with `username` and a secret (`default` a dataclass with its fields), which
    never comes from the config file itself: a password from password_file or password_env (read
    now), or, where `choose_secret` picks it, an OAuth token from token_file or token_env (only
    checked now: it is re-read at every probe). Without `choose_secret` the secret is a password
    and token keys are unknown. The other keys are read by `parsers`."""
    kinds = ("password",) if choose_secret is None else ("password", "token")
    for key, key_node, _ in pairs(doc, node, path):
        if key in kinds:
            doc.fail(
                key_node,
                join(path, key),
                f"a {key} is not allowed in the config file: put it in a file ({key}_file) "
                f"or an environment variable ({key}_env)",
            )
    secret_keys = [f"{kind}_{source}" for kind in kinds for source in ("file", "env")]
    values: dict[str, Any] = {}
    lines: dict[str, yaml.Node] = {}
    for key, key_node, value in fields(doc, node, path, [*parsers, *secret_keys]):
        sub = join(path, key)
        lines[key] = key_node
        if key == "password_file":
            values[key], values["password"] = read_secret_file(doc, value, sub)
        elif key == "password_env":
            values[key], values["password"] = read_secret_env(doc, value, sub)
        elif key == "token_file":
            values[key] = token_file(doc, value, sub)
        elif key == "token_env":
            values[key] = token_env(doc, value, sub)
        else:
            values[key] = parsers[key](doc, value, sub)
    if not values.get("username"):
        doc.fail(node, path, 'missing required key "username"')
    wanted = "password"
    if choose_secret is not None:
        wanted, other_message = choose_secret(values)
        other = "token" if wanted == "password" else "password"
        for key in (f"{other}_file", f"{other}_env"):
            if key in lines:
                doc.fail(lines[key], join(path, key), other_message)
    if f"{wanted}_file" in lines and f"{wanted}_env" in lines:
        doc.fail(lines[f"{wanted}_env"], path, f"set {wanted}_file or {wanted}_env, not both")
    if f"{wanted}_file" not in lines and f"{wanted}_env" not in lines:
        doc.fail(node, path, f"missing {wanted}_file or {wanted}_env")
    result: _C = dataclasses.replace(default, **values)  # type: ignore[type-var]
    if check is not None:
        check(doc, result, lines, path)
    return result
