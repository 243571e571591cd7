"""The `posture` section of a module: every key of the contract read and validated, one line per
error."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtp_exporter.config.loader import ConfigError, load_config_text
from smtp_exporter.config.render import effective_config_yaml
from smtp_exporter.config.schema import DNSBLConfig, PostureConfig
from tests.servers.tls import TestCA


def _module(body: str) -> str:
    return "modules:\n  m:\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def test_every_key_is_read(tmp_path: Path) -> None:
    config = load_config_text(
        _module("mx: true\nposture: {interval: 1s, mx_hygiene: true, dane: false, fcrdns: false}"),
        source="smtp.yml",
    )
    posture = config.modules["m"].posture
    assert posture == PostureConfig(interval=1.0, mx_hygiene=True)
    assert config.modules["smtp_handshake"].posture is None
    rendered = effective_config_yaml(config)
    assert "posture:\n      interval: 1s\n" in rendered
    assert "mx_hygiene: true" in rendered


def test_mta_sts_and_tls_rpt_load(tls_ca: TestCA) -> None:
    config = load_config_text(
        _module(f"mx: true\nposture: {{mta_sts: true, tls_rpt: true, ca_file: {tls_ca.ca_file}}}"),
        source="smtp.yml",
    )
    posture = config.modules["m"].posture
    assert posture == PostureConfig(mta_sts=True, tls_rpt=True, ca_file=tls_ca.ca_file)
    assert "mta_sts: true" in effective_config_yaml(config)


def test_fcrdns_and_dnsbl_load_without_mx() -> None:
    # Both are about the addresses the probe connected to: any target, mail domain or host.
    config = load_config_text(
        _module("posture: {fcrdns: true, dnsbl: {zones: [zen.spamhaus.org], addresses: [198.51.100.7]}}"),
        source="smtp.yml",
    )
    posture = config.modules["m"].posture
    assert posture == PostureConfig(
        fcrdns=True, dnsbl=DNSBLConfig(zones=("zen.spamhaus.org",), addresses=("198.51.100.7",))
    )
    rendered = effective_config_yaml(config)
    assert "fcrdns: true" in rendered and "zen.spamhaus.org" in rendered


@pytest.mark.parametrize("tls", ["starttls: required", "implicit_tls: true"])
def test_dane_loads_with_mandatory_tls(tls: str) -> None:
    config = load_config_text(_module(f"{tls}\nposture: {{dane: true}}"), source="smtp.yml")
    assert config.modules["m"].posture == PostureConfig(dane=True)
    assert "dane: true" in effective_config_yaml(config)


def test_the_default_interval_is_five_minutes() -> None:
    config = load_config_text(_module("mx: true\nposture: {mx_hygiene: true}"), source="smtp.yml")
    posture = config.modules["m"].posture
    assert posture is not None and posture.interval == 300.0


def test_a_ca_file_is_loaded_as_a_bundle(tmp_path: Path) -> None:
    pki = TestCA(tmp_path)
    config = load_config_text(
        _module(f"mx: true\nposture: {{mx_hygiene: true, ca_file: {pki.ca_file}}}"), source="smtp.yml"
    )
    posture = config.modules["m"].posture
    assert posture is not None and posture.ca_file == str(pki.ca_file)


@pytest.mark.parametrize(
    ("body", "line", "path", "message"),
    [
        (
            "posture: {mx_hygiene: true}",
            3,
            "modules.m.posture.mx_hygiene",
            "needs mx: true (the target must be the mail domain)",
        ),
        (
            "posture: {mta_sts: true}",
            3,
            "modules.m.posture.mta_sts",
            "needs mx: true (the target must be the mail domain)",
        ),
        (
            "posture: {tls_rpt: true}",
            3,
            "modules.m.posture.tls_rpt",
            "needs mx: true (the target must be the mail domain)",
        ),
        (
            "starttls: auto\nposture: {dane: true}",
            4,
            "modules.m.posture.dane",
            "needs starttls: required or implicit_tls: true (DANE is about the TLS the server presents)",
        ),
        ("posture: {interval: 5m}", 3, "modules.m.posture", "enables no check"),
        ("posture: {}", 3, "modules.m.posture", "enables no check"),
        (
            "mx: true\nposture: {mx_hygiene: true, interval: 0s}",
            4,
            "modules.m.posture.interval",
            "must be greater than 0",
        ),
        (
            "mx: true\nposture: {mx_hygiene: true, interval: 5}",
            4,
            "modules.m.posture.interval",
            'invalid duration "5": a unit is required, e.g. 5s',
        ),
        (
            "mx: true\nposture: {mx_hygiene: yes please}",
            4,
            "modules.m.posture.mx_hygiene",
            'must be true or false, not "yes please"',
        ),
        (
            "mx: true\nposture: {mx_hygene: true}",
            4,
            "modules.m.posture",
            'unknown key "mx_hygene" (did you mean "mx_hygiene"?)',
        ),
        (
            "posture: {dnsbl: {addresses: [192.0.2.1]}}",
            3,
            "modules.m.posture.dnsbl",
            'missing required key "zones"',
        ),
        ("posture: {dnsbl: {zones: []}}", 3, "modules.m.posture.dnsbl.zones", "must name at least one zone"),
        (
            "posture: {dnsbl: {zones: [bad zone]}}",
            3,
            "modules.m.posture.dnsbl.zones[0]",
            'invalid zone "bad zone": must be a DNS name',
        ),
        (
            "posture: {dnsbl: {zones: [bl.example], addresses: [198.51.100.300]}}",
            3,
            "modules.m.posture.dnsbl.addresses[0]",
            'invalid value "198.51.100.300": must be an IPv4 or IPv6 address',
        ),
        ("posture: {dnsbl: true}", 3, "modules.m.posture.dnsbl", "must be a mapping, not a boolean"),
        (
            "mx: true\nposture: {mx_hygiene: true, ca_file: /nonexistent/ca.pem}",
            4,
            "modules.m.posture.ca_file",
            'cannot read "/nonexistent/ca.pem": No such file or directory',
        ),
    ],
)
def test_errors_name_file_line_and_key(body: str, line: int, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(_module(body), source="smtp.yml")
    assert str(caught.value) == f"smtp.yml:{line}: {path}: {message}"


def test_a_file_that_is_not_a_ca_bundle_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        load_config_text(
            _module(f"mx: true\nposture: {{mx_hygiene: true, ca_file: {bogus}}}"), source="smtp.yml"
        )
    assert str(caught.value).startswith(
        f'smtp.yml:4: modules.m.posture.ca_file: cannot load CA file "{bogus}": '
    )


def test_dnsbl_lists_are_normalised() -> None:
    config = load_config_text(
        _module(
            "posture: {dnsbl: {zones: [ZEN.Spamhaus.org., zen.spamhaus.org], "
            "addresses: ['2001:DB8::1', 198.51.100.7]}}"
        ),
        source="smtp.yml",
    )
    posture = config.modules["m"].posture
    assert posture is not None
    assert posture.dnsbl == DNSBLConfig(
        zones=("zen.spamhaus.org",), addresses=("2001:db8::1", "198.51.100.7")
    )
