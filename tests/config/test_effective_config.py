"""The effective config (/config) shows everything but secrets; a planted password appears nowhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.loader import (
    ConfigError,
    default_config,
    effective_config_yaml,
    load_config,
    load_config_text,
)
from smtp_exporter.config.web import load_web_config_text

PASSWORD = "Pl4nted-S3cret-7f3a9c"

CONFIG = """\
modules:
  submission:
    port: 587
    starttls: required
    auth:
      mechanism: PLAIN
      username: probe@example.org
      password_file: password
    tls_config:
      insecure_skip_verify: true
targets:
  - target: mx1.example.org:587
    module: submission
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    path = tmp_path / "smtp.yml"
    path.write_text(CONFIG)
    return path


def test_password_appears_nowhere(config_path: Path, tmp_path: Path) -> None:
    config = load_config(str(config_path))
    auth = config.modules["submission"].auth
    assert auth is not None and auth.password.reveal() == PASSWORD  # it was really loaded
    rendered = effective_config_yaml(config)
    for output in (rendered, repr(config), str(config), f"{config}", repr(auth), str(auth.password)):
        assert PASSWORD not in output
    document = yaml.safe_load(rendered)
    shown = document["modules"]["submission"]["auth"]
    assert shown == {
        "mechanism": "PLAIN",
        "username": "probe@example.org",
        "password": "<secret>",
        "password_file": str(tmp_path / "password"),
        "password_env": None,
        "token_file": None,
        "token_env": None,
    }


def test_password_never_in_error_messages(
    config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = str(tmp_path / "password")
    broken = [
        CONFIG + "  - target: mx1.example.org:587\n    module: submission\n",  # an error after the auth block
        CONFIG.replace("password_file: password", f"password: {PASSWORD}"),  # pasted in the file
        CONFIG.replace("password_file: password", f"password_env: {PASSWORD}"),  # pasted in the wrong key
        CONFIG.replace("insecure_skip_verify: true", f"ca_file: {password_file}"),  # the secret is not PEM
    ]
    messages = []
    for index, text in enumerate(broken):
        path = tmp_path / f"broken{index}.yml"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        messages.append(str(caught.value))
    monkeypatch.setenv("SMTP_EXPORTER_TEST_PASSWORD", "")
    with pytest.raises(ConfigError) as caught:
        load_config_text(
            CONFIG.replace("password_file: password", "password_env: SMTP_EXPORTER_TEST_PASSWORD"), source="x"
        )
    messages.append(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        load_web_config_text(f"basic_auth_users:\n  prometheus: {PASSWORD}\n", source="web.yml")
    messages.append(str(caught.value))
    assert len(messages) == 6
    for message in messages:
        assert PASSWORD not in message, message


def test_effective_config_shows_every_module_with_defaults() -> None:
    document = yaml.safe_load(effective_config_yaml(default_config()))
    assert list(document) == [
        "modules",
        "defaults",
        "targets",
        "target_files",
        "scheduler",
        "metrics",
        "http_probe",
        "shard",
    ]
    assert list(document["modules"]) == list(BUILTIN_MODULES)
    handshake = document["modules"]["smtp_handshake"]
    assert handshake["timeout"] == "10s"
    assert handshake["tls_config"]["insecure_skip_verify"] is False  # shown explicitly
    assert handshake["auth"] is None
    assert document["modules"]["smtps_handshake"]["port"] == 465
    assert document["targets"] == [
        {
            "target": "localhost:25",
            "module": "smtp_handshake",
            "interval": "30s",
            "labels": {},
            "mx_mode": "primary",
        }
    ]


def test_effective_config_loads_back_to_the_same_config(tmp_path: Path) -> None:
    text = """\
modules:
  mx_check: {mx: true, timeout: 1m30s, dns: {nameservers: ["[::1]:53"], timeout: 250ms}}
  full:
    transaction: message
    rcpt_to: [a@example.org, b@example.org]
    message: {headers: {X-Probe: "1"}}
    expect: {banner: "^220 ", extensions: [size]}
targets:
  - {target: example.org, module: mx_check, mx_mode: each, interval: 5m, labels: {team: mail}}
  - {target: "192.0.2.1:2525", module: full}
metrics: {histogram_buckets: [0.5, 1.5]}
http_probe: {allowed_targets: ["192.0.2.0/24:25"]}
scheduler: {shutdown_grace_period: 1m}
"""
    first = load_config_text(text, source="a.yml")
    second = load_config_text(effective_config_yaml(first), source="a.yml")
    strip = [dataclasses.replace(target, line=0) for target in first.targets]
    assert [dataclasses.replace(target, line=0) for target in second.targets] == strip
    assert dataclasses.replace(second, targets=()) == dataclasses.replace(first, targets=())
