"""The module keys of issue 17 (pipelining, chunking, size_declaration, body_type, smtputf8,
requiretls): their defaults, every value, and the one-line errors of settings that contradict
each other or the module."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_exporter.config.loader import ConfigError, load_config
from smtp_exporter.config.schema import SMTPUTF8, BodyType, Chunking, Pipelining


def _load(tmp_path: Path, module: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text("modules:\n  m:\n" + "".join(f"    {line}\n" for line in module.strip().splitlines()))
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(str(_load(tmp_path, "transaction: message")))
    module = config.modules["m"]
    assert module.pipelining is Pipelining.AUTO
    assert module.chunking is Chunking.NEVER
    assert module.size_declaration is True
    assert module.body_type is BodyType.AUTO
    assert module.smtputf8 is SMTPUTF8.AUTO
    assert module.requiretls is False


def test_every_value(tmp_path: Path) -> None:
    text = """
transaction: message
starttls: auto
pipelining: required
chunking: auto
size_declaration: false
body_type: 7bit
smtputf8: required
requiretls: true
"""
    module = load_config(str(_load(tmp_path, text))).modules["m"]
    assert module.pipelining is Pipelining.REQUIRED
    assert module.chunking is Chunking.AUTO
    assert module.size_declaration is False
    assert module.body_type is BodyType.SEVEN_BIT
    assert module.smtputf8 is SMTPUTF8.REQUIRED
    assert module.requiretls is True


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (
            "pipelining: always",
            3,
            "pipelining",
            'invalid value "always": must be one of auto, never, required',
        ),
        ("chunking: yes", 3, "chunking", 'invalid value "yes": must be one of never, auto'),
        ("body_type: 8bit", 3, "body_type", 'invalid value "8bit": must be one of auto, 7bit'),
        ("smtputf8: never", 3, "smtputf8", 'invalid value "never": must be one of auto, required'),
        ("size_declaration: 1", 3, "size_declaration", 'must be true or false, not "1"'),
        (
            "transaction: message\nstarttls: never\nrequiretls: true",
            5,
            "requiretls",
            "REQUIRETLS is only sent over TLS, and starttls: never rules it out",
        ),
        (
            "starttls: required\nrequiretls: true",
            4,
            "requiretls",
            "requiretls needs transaction: envelope or message",
        ),
        ("pipelining: required", 3, "pipelining", "pipelining needs transaction: envelope or message"),
        (
            "transaction: envelope\nbody_type: 7bit\nrcpt_to: [jörg@example.org]",
            4,
            "body_type",
            "body_type: 7bit, but the message's addresses, subject, headers or body are not ASCII",
        ),
        (
            "transaction: message\nbody_type: 7bit\nmessage: {body: Grüße}",
            4,
            "body_type",
            "body_type: 7bit, but the message's addresses, subject, headers or body are not ASCII",
        ),
    ],
    ids=[
        "pipelining_invalid",
        "chunking_invalid",
        "body_type_invalid",
        "smtputf8_invalid",
        "size_declaration_not_boolean",
        "requiretls_with_starttls_never",
        "requiretls_without_transaction",
        "pipelining_required_without_transaction",
        "7bit_with_a_non_ascii_address",
        "7bit_with_a_non_ascii_body",
    ],
)
def test_errors(tmp_path: Path, text: str, line: int, key: str, message: str) -> None:
    path = _load(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}:{line}: modules.m.{key}: {message}"


@pytest.mark.parametrize(
    "text",
    [
        "transaction: message\nimplicit_tls: true\nrequiretls: true",
        "transaction: envelope\nstarttls: required\nrequiretls: true",
        "transaction: message\nrequiretls: true",  # starttls: auto, checked when the probe runs
        "pipelining: never",  # pipelining: auto/never on a module without a transaction is harmless
        "transaction: message\nbody_type: 7bit",
    ],
)
def test_accepted(tmp_path: Path, text: str) -> None:
    load_config(str(_load(tmp_path, text)))
