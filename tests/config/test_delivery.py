"""The `delivery` section: defaults, the TLS choice, secrets from files or the environment, and
the IMAP SSL context compiled once into the module."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_exporter.config.loader import load
from smtp_exporter.config.render import effective_config_yaml
from smtp_exporter.config.schema import StartTLS
from smtp_exporter.snapshot import compile_snapshot


def _write(tmp_path: Path, text: str) -> str:
    (tmp_path / "imap-password").write_text("imap secret 1\n")
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


def test_the_issues_example_with_its_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
modules:
  roundtrip:
    transaction: message
    timeout: 10s
    delivery:
      imap:
        host: imap.example.org
        username: probe-inbox@example.org
        password_file: imap-password
      timeout: 2m
      authserv_id: mx.example.org
targets:
  - {target: mx.example.org, module: roundtrip, interval: 5m}
""",
    )
    loaded = load(path)
    delivery = loaded.config.modules["roundtrip"].delivery
    assert delivery is not None
    imap = delivery.imap
    assert (imap.host, imap.effective_port, imap.tls_on_connect, imap.mailbox) == (
        "imap.example.org",
        993,
        True,
        "INBOX",
    )
    assert imap.password.reveal() == "imap secret 1"
    assert (delivery.timeout, delivery.poll_interval, delivery.delete, delivery.authserv_id) == (
        120.0,
        2.0,
        True,
        "mx.example.org",
    )
    assert str(tmp_path / "imap-password") in loaded.files  # watched like every secret file
    module = compile_snapshot(loaded).modules["roundtrip"]
    assert module.imap_tls_context is not None
    rendered = effective_config_yaml(loaded.config)
    assert "imap secret 1" not in rendered and "password: <secret>" in rendered
    assert "timeout: 2m" in rendered and "poll_interval: 2s" in rendered


def test_starttls_required_alone_means_port_143(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_IMAP_PASSWORD", "from the environment")
    path = _write(
        tmp_path,
        """\
modules:
  roundtrip:
    delivery:
      imap: {starttls: required, username: u, password_env: PROBE_IMAP_PASSWORD, mailbox: Probes}
      poll_interval: 500ms
    transaction: message
""",
    )
    delivery = load(path).config.modules["roundtrip"].delivery
    assert delivery is not None
    imap = delivery.imap
    assert (imap.starttls, imap.tls_on_connect, imap.effective_port) == (StartTLS.REQUIRED, False, 143)
    assert (imap.password.reveal(), imap.mailbox, delivery.poll_interval) == (
        "from the environment",
        "Probes",
        0.5,
    )


def test_a_module_without_delivery_has_none(tmp_path: Path) -> None:
    loaded = load(_write(tmp_path, "modules:\n  plain: {port: 2525}\n"))
    assert loaded.config.modules["plain"].delivery is None
    assert compile_snapshot(loaded).modules["plain"].imap_tls_context is None
