"""mta_sts's judgement of the MX certificate (RFC 8461 section 4.2), from a real STARTTLS
conversation with aiosmtpd through the prober, the policy over real HTTPS on loopback port 443;
and its series in the output forms, under mx_mode each too."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import pytest

from smtp_exporter.config.schema import PostureConfig, StartTLS, TLSConfig
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, ProbeResult
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.posture.test_mta_sts import GOOD_POLICY, ID, _module, _values
from tests.probe.common import compiled, describe
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer
from tests.servers.https_server import HttpsServer, Page
from tests.servers.tls import TestCA


@pytest.fixture
def https(tls_ca: TestCA) -> Iterator[HttpsServer]:
    with HttpsServer(tls_ca.issue("mta-sts.good.test")) as server:
        server.pages["mta-sts.good.test"] = Page(body=GOOD_POLICY)
        yield server


@pytest.fixture
def mx_dns(dns_server: Callable[..., DnsServer], https: HttpsServer) -> DnsServer:
    return dns_server(
        {
            "good.test": {"MX": ["10 mx1.good.test.", "20 a.backup.good.test."]},
            "mx1.good.test": {"A": "127.0.0.1"},
            "a.backup.good.test": {"A": "127.0.0.1"},
            "_mta-sts.good.test": {"TXT": f'"v=STSv1; id={ID}"'},
            "mta-sts.good.test": {"A": https.host},
        }
    )


async def _probe(
    mx_dns: DnsServer, ca: TestCA | None, smtp: AiosmtpdServer, tls: TLSConfig, *, each: bool = False
) -> list[ProbeResult]:
    settings = dataclasses.replace(
        _module(mx_dns, ca, port=smtp.port, starttls=StartTLS.REQUIRED, tls_config=tls),
        posture=PostureConfig(mta_sts=True, ca_file=ca.ca_file if ca is not None else None),
    )
    target, compiled_module, text = compiled("good.test", "m", settings)
    if each:
        return await Prober().probe_each_mx(target, compiled_module, text)
    return [await Prober().probe(target, compiled_module, text)]


async def test_the_connected_mx_certificate(
    mx_dns: DnsServer, tls_ca: TestCA, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    smtp = smtp_server_factory(starttls=tls_ca.issue("mx1.good.test"))
    (result,) = await _probe(mx_dns, tls_ca, smtp, TLSConfig(ca_file=tls_ca.ca_file))
    assert result.success, describe(result)
    assert result.tls is not None and result.tls.chain == ()  # used, then dropped: not kept
    (report,) = result.posture
    values = _values(report)
    assert values['smtp_mta_sts_cert_valid{mx_host="mx1.good.test"}'] == 1
    assert not any("a.backup" in name and "cert_valid" in name for name in values)  # not connected to
    assert (
        f"MX mx1.good.test certificate valid for MTA-STS (PKIX against {tls_ca.ca_file}, name matches)"
        in report.reasons
    )


async def test_a_certificate_for_another_name_is_not_valid(
    mx_dns: DnsServer, tls_ca: TestCA, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    smtp = smtp_server_factory(starttls=tls_ca.issue("mail.elsewhere.test"))
    # The probe does not check (insecure_skip_verify): MTA-STS still judges what was presented.
    (result,) = await _probe(mx_dns, tls_ca, smtp, TLSConfig(insecure_skip_verify=True))
    assert result.success, describe(result)
    (report,) = result.posture
    assert _values(report)['smtp_mta_sts_cert_valid{mx_host="mx1.good.test"}'] == 0
    assert "MX mx1.good.test certificate not valid for MTA-STS: the certificate is not for mx1.good.test" in (
        report.reasons
    )


async def test_the_probe_failing_verification_still_gets_a_verdict(
    mx_dns: DnsServer, tls_ca: TestCA, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    smtp = smtp_server_factory(starttls=tls_ca.expired())
    (result,) = await _probe(mx_dns, tls_ca, smtp, TLSConfig(ca_file=tls_ca.ca_file))
    assert result.failure is not None and result.failure.reason is FailureReason.TLS_CERT_INVALID
    (report,) = result.posture
    assert _values(report)['smtp_mta_sts_cert_valid{mx_host="mx1.good.test"}'] == 0
    assert any(
        text.startswith("MX mx1.good.test certificate not valid for MTA-STS: ") for text in report.reasons
    ), report.reasons


async def test_a_ca_outside_the_trust_is_not_valid(
    mx_dns: DnsServer, tls_ca: TestCA, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    smtp = smtp_server_factory(starttls=tls_ca.issue("mx1.good.test"))
    # The probe trusts the test CA; MTA-STS trusts the system's store, which does not hold it.
    (result,) = await _probe(mx_dns, None, smtp, TLSConfig(ca_file=tls_ca.ca_file))
    assert result.success, describe(result)
    (report,) = result.posture
    assert _values(report)['smtp_mta_sts_cert_valid{mx_host="mx1.good.test"}'] == 0
    assert any("no path to a CA of the system's CA store" in text for text in report.reasons), report.reasons


async def test_no_starttls_is_not_valid(
    mx_dns: DnsServer, tls_ca: TestCA, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    smtp = smtp_server_factory()
    (result,) = await _probe(mx_dns, tls_ca, smtp, TLSConfig(ca_file=tls_ca.ca_file))
    assert result.failure is not None and result.failure.reason is FailureReason.STARTTLS_NOT_OFFERED
    (report,) = result.posture
    assert _values(report)['smtp_mta_sts_cert_valid{mx_host="mx1.good.test"}'] == 0
    assert "MX mx1.good.test certificate not valid for MTA-STS: it offers no STARTTLS" in report.reasons


async def test_output_forms(
    mx_dns: DnsServer, tls_ca: TestCA, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    smtp = smtp_server_factory(starttls=tls_ca.issue("mx1.good.test", "a.backup.good.test"))
    (result,) = await _probe(mx_dns, tls_ca, smtp, TLSConfig(ca_file=tls_ca.ca_file))
    body = render_probe_result(result, openmetrics=False).decode()
    for line in (
        "# TYPE smtp_mta_sts_record_valid gauge\nsmtp_mta_sts_record_valid 1\n",
        "smtp_mta_sts_policy_fetch_success 1\n",
        'smtp_mta_sts_policy_mode{mode="enforce"} 1\n',
        'smtp_mta_sts_policy_mode{mode="testing"} 0\n',
        "smtp_mta_sts_policy_max_age_seconds 604800\n",
        'smtp_mta_sts_mx_covered{mx_host="mx1.good.test"} 1\n',
        'smtp_mta_sts_mx_covered{mx_host="a.backup.good.test"} 1\n',
        'smtp_mta_sts_cert_valid{mx_host="mx1.good.test"} 1\n',
        "smtp_mta_sts_policy_changed_without_id_change 0\n",
        "smtp_probe_success 1\n",
    ):
        assert line in body
    document = json.loads(json.dumps(probe_json(result)))
    section = document["posture"]["mta_sts"]
    assert section["record_id"] == ID
    assert section["certificate"] == {"host": "mx1.good.test", "valid": True, "error": None}
    assert section["mx"][0] == {"host": "mx1.good.test", "covered": True, "pattern": "mx1.good.test"}
    text = format_text(result)
    assert f"    MX mx1.good.test covered by policy id {ID} (pattern mx1.good.test)\n" in text

    # mx_mode each: each series carries mx_host itself, and reports its own MX's values only.
    results = await _probe(mx_dns, tls_ca, smtp, TLSConfig(ca_file=tls_ca.ca_file), each=True)
    rendered = {}
    for each in results:
        assert each.mx is not None
        labels = (("target", "good.test"), ("module", "m"), ("mx_host", each.mx.host))
        state = SeriesState(labels, buckets=Buckets((1.0,)), phase_histograms=False)
        rendered[each.mx.host] = series_text(state, each)
    own = 'target="good.test",module="m",mx_host="a.backup.good.test"'
    assert f"smtp_mta_sts_mx_covered{{{own}}} 1\n" in rendered["a.backup.good.test"]
    assert f"smtp_mta_sts_cert_valid{{{own}}} 1\n" in rendered["a.backup.good.test"]
    assert 'mx_host="mx1.good.test"' not in rendered["a.backup.good.test"]
    assert f"smtp_mta_sts_record_valid{{{own}}} 1\n" in rendered["a.backup.good.test"]
