"""The `delivery` section of a module: the IMAP mailbox where the probe message must appear.

The parsers of text and `tls_config` are the modules' own, passed in (`delivery_parser`), so
that each validator has one implementation and this module does not import `modules`.
"""

from __future__ import annotations

import dataclasses

import yaml

from smtp_exporter.config.durations import format_duration
from smtp_exporter.config.files import credentials
from smtp_exporter.config.nodes import (
    Document,
    Parser,
    boolean,
    duration_upto,
    integer_in,
    is_null,
    join,
    one_of,
    pairs,
    section,
)
from smtp_exporter.config.schema import DeliveryConfig, ImapConfig, StartTLS

MAX_DELIVERY_TIMEOUT = 3600.0  # a relay that defers for longer is a failed delivery anyway


def _mailbox(text: Parser) -> Parser:
    def parse(doc: Document, node: yaml.Node, path: str) -> str:
        name = str(text(doc, node, path))
        if not name or '"' in name or "\\" in name:
            # Sent as an IMAP quoted string: no quotes or backslashes to escape.
            doc.fail(node, path, 'must be a non-empty mailbox name without " or \\')
        return name

    return parse


def _check_imap(doc: Document, imap: ImapConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if imap.starttls is StartTLS.AUTO:
        doc.fail(
            keys["starttls"],
            join(path, "starttls"),
            "starttls: auto would send the IMAP password in clear text to a server that stops "
            "offering STARTTLS: use required, or implicit_tls: true",
        )
    if imap.starttls is StartTLS.REQUIRED and imap.implicit_tls:
        doc.fail(
            keys["starttls"], join(path, "starttls"), "starttls: required contradicts implicit_tls: true"
        )
    if imap.starttls is StartTLS.NEVER and imap.implicit_tls is False:
        doc.fail(
            keys["implicit_tls"],
            join(path, "implicit_tls"),
            "the IMAP login needs an encrypted connection: set implicit_tls: true or starttls: required",
        )


def _check_delivery(doc: Document, delivery: DeliveryConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if delivery.poll_interval >= delivery.timeout:
        doc.fail(
            keys.get("poll_interval", keys.get("timeout")),
            join(path, "poll_interval"),
            f"must be shorter than delivery.timeout ({format_duration(delivery.timeout)})",
        )


def delivery_parser(tls_config: Parser, text: Parser, address: Parser) -> Parser:
    """The parser of `delivery`, given the modules' parsers of `tls_config`, command text and
    addresses (a host name or an IMAP username obeys the same rules: no CR, LF, NUL)."""
    imap_keys: dict[str, Parser] = {
        "host": address,
        "port": integer_in(1, 65535),
        "implicit_tls": boolean,
        "starttls": one_of(StartTLS),
        "tls_config": tls_config,
        "username": text,
        "mailbox": _mailbox(text),
    }

    def imap(doc: Document, node: yaml.Node, path: str) -> ImapConfig:
        return credentials(doc, node, path, ImapConfig(), imap_keys, _check_imap)

    keys: dict[str, Parser] = {
        "imap": imap,
        "timeout": duration_upto(MAX_DELIVERY_TIMEOUT),
        "poll_interval": duration_upto(MAX_DELIVERY_TIMEOUT),
        "delete": boolean,
        "authserv_id": address,
    }
    assert set(keys) == {field.name for field in dataclasses.fields(DeliveryConfig)}

    def parse(doc: Document, node: yaml.Node, path: str) -> DeliveryConfig:
        if "imap" not in {key for key, _, value in pairs(doc, node, path) if not is_null(value)}:
            doc.fail(node, path, 'missing required key "imap"')
        return section(doc, node, path, DeliveryConfig(), keys, _check_delivery)

    return parse
