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
from collections.abc import Mapping
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


def credentials(
    doc: Document,
    node: yaml.Node,
    path: str,
    default: _C,
    parsers: Mapping[str, Parser],
    check: Check[_C] | None = None,
) -> _C:
    """A section with `username` and a password (`default` a dataclass with `password`,
    `password_file` and `password_env` fields): the password comes from password_file or
    password_env, never from the config file itself; the other keys are read by `parsers`."""
    for key, key_node, _ in pairs(doc, node, path):
        if key == "password":
            doc.fail(
                key_node,
                join(path, key),
                "a password is not allowed in the config file: put it in a file (password_file) "
                "or an environment variable (password_env)",
            )
    values: dict[str, Any] = {}
    lines: dict[str, yaml.Node] = {}
    for key, key_node, value in fields(doc, node, path, [*parsers, "password_file", "password_env"]):
        sub = join(path, key)
        lines[key] = key_node
        if key == "password_file":
            values[key], values["password"] = read_secret_file(doc, value, sub)
        elif key == "password_env":
            values[key], values["password"] = read_secret_env(doc, value, sub)
        else:
            values[key] = parsers[key](doc, value, sub)
    if not values.get("username"):
        doc.fail(node, path, 'missing required key "username"')
    if "password_file" in values and "password_env" in values:
        doc.fail(lines["password_env"], path, "set password_file or password_env, not both")
    if "password" not in values:
        doc.fail(node, path, "missing password_file or password_env")
    result: _C = dataclasses.replace(default, **values)  # type: ignore[type-var]
    if check is not None:
        check(doc, result, lines, path)
    return result
