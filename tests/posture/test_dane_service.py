"""DANE in the running exporter: scheduled probes of a DANE module report its series in /metrics,
and the resolver self-check warns at start-up (and after a reload) when the module's resolver
does not validate. The real DNSSEC lab and aiosmtpd STARTTLS, as in test_dane.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.posture.dane_world import Hierarchy, association
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dnssec import DnssecLab
from tests.service.conftest import Running, running_exporter, sample_value, wait_for

DOMAIN = "svc.example.test"
MX = "mx.svc.example.test"
WARNING = "DANE needs a validating resolver"


@dataclass(frozen=True, slots=True)
class Setup:
    lab: DnssecLab
    server: AiosmtpdServer


@pytest.fixture(scope="module")
def setup(dnssec_lab: DnssecLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    chain = Hierarchy(tmp_path_factory.mktemp("dane-service")).chain(MX)
    server = AiosmtpdServer(starttls=chain.server).start()
    try:
        dnssec_lab.add(DOMAIN, "MX", f"10 {MX}.").add(MX, "A", "127.0.0.1")
        dnssec_lab.tlsa(f"_{server.port}._tcp.{MX}", 3, 1, 1, association(chain.leaf, 1, 1))
        dnssec_lab.reload()
        yield Setup(dnssec_lab, server)
    finally:
        server.stop()


def _config(setup: Setup, nameserver: str) -> str:
    return f"""
modules:
  dane:
    mx: true
    port: {setup.server.port}
    timeout: 900ms
    ehlo: probe.test
    starttls: required
    tls_config: {{insecure_skip_verify: true}}
    dns: {{nameservers: ["{nameserver}"], timeout: 500ms}}
    posture: {{interval: 1s, dane: true}}
targets:
  - {{target: {DOMAIN}, module: dane, interval: 1s}}
"""


async def _state(running: Running, state: str) -> float | None:
    text = await running.metrics()
    return sample_value(text, "smtp_dane_state", target=DOMAIN, module="dane", mx_host=MX, state=state)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == WARNING]


async def test_scheduled_probes_report_dane_and_a_validating_resolver_is_not_warned_of(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtp_exporter")
    path = tmp_path / "smtp-exporter.yml"
    path.write_text(_config(setup, setup.lab.resolver.nameserver))
    async with running_exporter(path) as running:

        async def valid() -> bool:
            return await _state(running, "valid") == 1

        await wait_for(valid, "the DANE state valid in /metrics")
        text = await running.metrics()
        assert sample_value(text, "smtp_posture_resolver_validating", target=DOMAIN, module="dane") == 1
        assert sample_value(text, "smtp_probe_success", target=DOMAIN, module="dane") == 1
        assert (
            sample_value(text, "smtp_dane_tlsa_record_match", target=DOMAIN, mx_host=MX, usage="3", index="0")
            == 1
        )
    assert _warnings(caplog) == []


async def test_a_resolver_that_does_not_validate_is_warned_of_at_start_up_and_reload(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtp_exporter")
    plain = setup.lab.start_resolver(trust_anchor=False)
    path = tmp_path / "smtp-exporter.yml"
    path.write_text(_config(setup, plain.nameserver))
    async with running_exporter(path) as running:
        await wait_for(lambda: len(_warnings(caplog)) == 1, "the start-up warning")
        (warned,) = _warnings(caplog)
        assert warned.fields == {  # type: ignore[attr-defined]
            "module": "dane",
            "problem": "the resolver does not validate DNSSEC: no AD bit on the root's DNSKEY",
        }

        async def not_validating() -> bool:
            return await _state(running, "resolver_not_validating") == 1

        await wait_for(not_validating, "the DANE state resolver_not_validating in /metrics")
        text = await running.metrics()
        assert sample_value(text, "smtp_posture_resolver_validating", target=DOMAIN, module="dane") == 0
        assert await _state(running, "no_tlsa") == 0  # never a false "no DANE"

        path.write_text(_config(setup, plain.nameserver) + "\n# touched\n")
        await running.exporter.reload()
        # The file watcher may notice the change too and reload once more: each reload warns.
        await wait_for(lambda: len(_warnings(caplog)) >= 2, "the warning after the reload")
