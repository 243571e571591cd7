"""Valid configs: defaults from schema.py first, then what the file says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trustme

from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.loader import ConfigError, default_config, load_config, load_config_text
from smtp_exporter.config.loader import load as load_loaded
from smtp_exporter.config.schema import (
    AuthMechanism,
    Config,
    DefaultsConfig,
    IPProtocol,
    MessageConfig,
    ModuleConfig,
    MXMode,
    StartTLS,
    TargetConfig,
)
from smtp_exporter.model import Transaction

FULL = """\
modules:
  smtp_full:
    transaction: message
    mail_from: probe@example.org
    rcpt_to: postmaster@example.org
    message:
      subject: probe
      headers: {X-Probe: "yes"}
    expect: {banner: "^mx[0-9]\\\\.", extensions: [starttls, pipelining]}
  mx_check:
    mx: true
    timeout: 5s
    ip_protocol: ip6
    dns: {nameservers: ["127.0.0.1:5353", "[::1]:53", "::1"], timeout: 500ms}
defaults: {module: smtp_envelope, interval: 2m}
targets:
  - target: mx1.example.org:25
    module: smtp_full
    interval: 30s
    labels: {team: mail, site: fra}
  - target: example.org
    module: mx_check
    mx_mode: each
  - target: "[2001:db8::25]:2525"
scheduler: {max_concurrency: 64, shutdown_grace_period: 0}
metrics: {histogram_buckets: [0.1, 1, 10], phase_histograms: true}
http_probe: {allowed_targets: ["*.example.org", ":25"], max_concurrent: 8}
shard: {count: 2, index: 1}
"""


def load(text: str) -> Config:
    return load_config_text(text, source="test.yml")


def test_full_example() -> None:
    config = load(FULL)
    full = config.modules["smtp_full"]
    assert full == dataclasses.replace(
        ModuleConfig(),
        transaction=Transaction.MESSAGE,
        mail_from="probe@example.org",
        rcpt_to=("postmaster@example.org",),
        message=MessageConfig(subject="probe", headers=(("X-Probe", "yes"),)),
        expect=dataclasses.replace(full.expect, banner="^mx[0-9]\\.", extensions=("STARTTLS", "PIPELINING")),
    )
    mx = config.modules["mx_check"]
    assert (mx.mx, mx.timeout, mx.ip_protocol) == (True, 5.0, IPProtocol.IP6)
    assert mx.dns.nameservers == ("127.0.0.1:5353", "[::1]:53", "::1")
    assert mx.dns.timeout == 0.5
    assert config.defaults == DefaultsConfig(module="smtp_envelope", interval=120.0)
    assert config.targets == (
        TargetConfig(
            target="mx1.example.org:25",
            module="smtp_full",
            interval=30.0,
            labels=(("team", "mail"), ("site", "fra")),
            line=17,
        ),
        TargetConfig(target="example.org", module="mx_check", interval=120.0, mx_mode=MXMode.EACH, line=21),
        TargetConfig(target="[2001:db8::25]:2525", module="smtp_envelope", interval=120.0, line=24),
    )
    assert (config.scheduler.max_concurrency, config.scheduler.shutdown_grace_period) == (64, 0.0)
    assert config.metrics.histogram_buckets == (0.1, 1.0, 10.0)
    assert config.metrics.phase_histograms is True
    assert config.http_probe.allowed_targets == ("*.example.org", ":25")
    assert config.http_probe.max_concurrent == 8
    assert (config.shard.count, config.shard.index) == (2, 1)
    assert config.source == "test.yml"


def test_empty_file_gives_built_in_modules_and_no_targets() -> None:
    for text in ("", "# only a comment\n", "{}\n"):
        config = load(text)
        assert config.modules == BUILTIN_MODULES
        assert config.targets == ()
        assert config == Config(modules=dict(BUILTIN_MODULES), source="test.yml")


def test_empty_values_mean_defaults() -> None:
    config = load("modules:\n  foo:\n    port:\n    tls_config:\n    auth:\nscheduler:\n")
    assert config.modules["foo"] == ModuleConfig()


def test_a_built_in_is_replaced_not_merged() -> None:
    config = load("modules:\n  smtps_handshake:\n    timeout: 5s\n")
    assert config.modules["smtps_handshake"] == ModuleConfig(timeout=5.0)
    assert BUILTIN_MODULES["smtps_handshake"].port == 465  # the built-in itself is untouched
    assert config.modules["submission"] == BUILTIN_MODULES["submission"]
    assert list(config.modules) == list(BUILTIN_MODULES)


def test_new_modules_are_added_after_the_built_ins() -> None:
    config = load("modules:\n  zzz: {}\n  aaa: {port: 2525}\n")
    assert list(config.modules) == [*BUILTIN_MODULES, "zzz", "aaa"]
    assert config.modules["aaa"].port == 2525


def test_default_config() -> None:
    config = default_config()
    assert config.modules == BUILTIN_MODULES
    assert [(t.target, t.module, t.interval) for t in config.targets] == [
        ("localhost:25", "smtp_handshake", 30.0)
    ]
    assert config.source == "<built-in>"


def test_target_defaults_come_from_defaults_section() -> None:
    config = load("targets:\n  - target: mx1.example.org\n")
    assert config.targets[0].module == DefaultsConfig().module
    assert config.targets[0].interval == DefaultsConfig().interval


def test_yaml_scalars_are_read_as_written() -> None:
    config = load(
        "modules:\n  foo:\n    starttls: required\n    ehlo: 0123\n    mail_from: 'x@y'\n"
        "    auth: {username: 007, password_env: HOME, mechanism: CRAM-MD5}\n"
    )
    foo = config.modules["foo"]
    assert foo.ehlo == "0123"
    assert foo.auth is not None
    assert (foo.auth.username, foo.auth.mechanism) == ("007", AuthMechanism.CRAM_MD5)


def test_password_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "password").write_text("pa ss\n\n")
    path = tmp_path / "config.yml"
    path.write_text(
        "modules:\n  submission:\n    port: 587\n    starttls: required\n"
        "    auth: {username: probe, password_file: secrets/password}\n"
    )
    auth = load_config(str(path)).modules["submission"].auth
    assert auth is not None
    assert auth.password.reveal() == "pa ss\n"  # exactly one trailing newline stripped
    assert auth.password_file == str(tmp_path / "secrets" / "password")
    assert repr(auth.password) == "<secret>"


def test_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_EXPORTER_TEST_PASSWORD", "from-env")
    config = load(
        "modules:\n  s:\n    implicit_tls: true\n    auth: {username: u, password_env: SMTP_EXPORTER_TEST_PASSWORD}\n"
    )
    auth = config.modules["s"].auth
    assert auth is not None
    assert auth.password.reveal() == "from-env"
    assert auth.password_env == "SMTP_EXPORTER_TEST_PASSWORD"


def test_oauth_token_file_is_named_not_read_nor_watched(tmp_path: Path) -> None:
    """The token file must exist at load, but its content is read at every probe (an agent
    rewrites it): it is not in the config, and not among the files whose change reloads it."""
    (tmp_path / "token").write_text("")  # empty now: only a probe that finds it empty fails
    path = tmp_path / "config.yml"
    path.write_text(
        "modules:\n  m365:\n    port: 587\n    starttls: required\n"
        "    auth: {mechanism: XOAUTH2, username: probe@example.org, token_file: token}\n"
    )
    loaded = load_loaded(str(path))
    auth = loaded.config.modules["m365"].auth
    assert auth is not None
    assert (auth.mechanism, auth.username, auth.token_file, auth.token_env) == (
        AuthMechanism.XOAUTH2,
        "probe@example.org",
        str(tmp_path / "token"),
        None,
    )
    assert auth.password.reveal() == ""
    assert str(tmp_path / "token") not in loaded.files


def test_oauth_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_EXPORTER_TEST_TOKEN", "ya29.from-env")
    config = load(
        "modules:\n  g:\n    implicit_tls: true\n"
        "    auth: {mechanism: OAUTHBEARER, username: u@example.org, token_env: SMTP_EXPORTER_TEST_TOKEN}\n"
    )
    auth = config.modules["g"].auth
    assert auth is not None
    assert (auth.mechanism, auth.token_env, auth.token_file) == (
        AuthMechanism.OAUTHBEARER,
        "SMTP_EXPORTER_TEST_TOKEN",
        None,
    )
    assert "ya29.from-env" not in repr(config)


def test_oauth_username_with_the_separator_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_EXPORTER_TEST_TOKEN", "ya29.from-env")
    with pytest.raises(ConfigError) as caught:
        load(
            "modules:\n  g:\n    implicit_tls: true\n    auth:\n      mechanism: XOAUTH2\n"
            '      username: "a\\x01b"\n      token_env: SMTP_EXPORTER_TEST_TOKEN\n'
        )
    assert str(caught.value) == (
        "test.yml:6: modules.g.auth.username: must not contain the control character U+0001"
    )


def test_empty_password_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_EXPORTER_TEST_PASSWORD", "")
    with pytest.raises(ConfigError) as caught:
        load(
            "modules:\n  s:\n    implicit_tls: true\n    auth: {username: u, password_env: SMTP_EXPORTER_TEST_PASSWORD}\n"
        )
    assert str(caught.value) == (
        "test.yml:4: modules.s.auth.password_env: the environment variable named here is empty"
    )


def test_tls_client_certificate_and_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("probe.example.org")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path = tmp_path / "config.yml"
    path.write_text(
        "modules:\n  m:\n    tls_config:\n      ca_file: ca.pem\n      cert_file: client.pem\n"
        "      key_file: client.key\n      insecure_skip_verify: true\n      min_version: TLS13\n"
        "      server_name: mx.example.org\n"
    )
    tls = load_config(str(path)).modules["m"].tls_config
    assert tls.ca_file == str(tmp_path / "ca.pem")
    assert (tls.insecure_skip_verify, tls.min_version, tls.server_name) == (True, "TLS13", "mx.example.org")
    # A key that does not belong to the certificate is refused at load.
    other = ca.issue_cert("other.example.org")
    other.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(
        f"{path}:5: modules.m.tls_config.cert_file: cannot load certificate and key: "
    )


def test_mx_target_and_each_mode() -> None:
    config = load(
        "modules:\n  mx: {mx: true}\ntargets:\n  - {target: Example.ORG., module: mx, mx_mode: each}\n"
    )
    assert config.targets[0].mx_mode is MXMode.EACH


def test_same_target_with_two_modules_is_not_a_duplicate() -> None:
    config = load(
        "targets:\n  - {target: mx1.example.org, module: smtp_full}\n  - {target: mx1.example.org}\n"
    )
    assert len(config.targets) == 2


@pytest.mark.parametrize(
    ("snippet", "attribute", "expected"),
    [
        ("starttls: never", "starttls", StartTLS.NEVER),
        ("rcpt_to: [a@example.org, b@example.org]", "rcpt_to", ("a@example.org", "b@example.org")),
        ("fail_on_quit: yes", "fail_on_quit", True),
        ("helo_fallback: false", "helo_fallback", False),
        ("port: 0x1d", None, None),  # only decimal integers
    ],
)
def test_module_values(snippet: str, attribute: str | None, expected: object) -> None:
    text = f"modules:\n  m:\n    {snippet}\n"
    if attribute is None:
        with pytest.raises(ConfigError):
            load(text)
        return
    assert getattr(load(text).modules["m"], attribute) == expected


def test_anchors_and_aliases_work() -> None:
    config = load("modules:\n  a: &common {port: 2525, timeout: 3s}\n  b: *common\n")
    assert config.modules["a"] == config.modules["b"] == ModuleConfig(port=2525, timeout=3.0)


def test_loading_does_not_depend_on_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader must not touch DNS")

    monkeypatch.setattr(socket, "getfqdn", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(socket, "gethostbyname", forbidden)
    config = load(FULL)
    assert config.modules["smtp_handshake"].ehlo is None
