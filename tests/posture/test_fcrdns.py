"""fcrdns against real DNS: PTR records in the DNSSEC lab's signed in-addr.arpa. and ip6.arpa.
zones (nsd), forward names in example.test., asked through its validating unbound; the probe
connects to aiosmtpd listening on loopback addresses, each with its own reverse DNS."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from smtp_exporter.config.schema import DNSConfig, ModuleConfig, PostureConfig
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import CheckReport, ProbeResult
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.probe.common import compiled, describe, module
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dnssec import DnssecLab

MATCH = "smtp_fcrdns_match"
NAME_MATCH = "smtp_fcrdns_banner_name_match"


@pytest.fixture(scope="module")
def lab() -> Iterator[DnssecLab]:
    with DnssecLab() as lab:
        lab.ptr("127.0.0.1", "mail.example.test").add("mail.example.test", "A", "127.0.0.1")
        # Confirms through its second name only (a host with two PTR records).
        lab.ptr("127.0.0.4", "stale.example.test").ptr("127.0.0.4", "mx4.example.test")
        lab.add("stale.example.test", "A", "127.0.0.40").add("mx4.example.test", "A", "127.0.0.4")
        # Points at a name whose address is another one: does not confirm.
        lab.ptr("127.0.0.2", "other.example.test").add("other.example.test", "A", "127.0.0.9")
        # 127.0.0.3: no PTR at all. 127.0.0.5: a PTR whose name does not exist.
        lab.ptr("127.0.0.5", "gone.example.test")
        # 127.0.0.6: a PTR whose signature is broken (bogus).
        lab.ptr("127.0.0.6", "mail.example.test").corrupt("6.0.0.127.in-addr.arpa", "PTR")
        lab.ptr("::1", "v6.example.test").add("v6.example.test", "AAAA", "::1")
        lab.add("v6.example.test", "A", "127.0.0.1")  # an A that matches is not an IPv6 match
        lab.reload()
        yield lab


def _module(lab: DnssecLab, port: int) -> ModuleConfig:
    return module(
        port=port,
        dns=DNSConfig(nameservers=(lab.resolver.nameserver,), timeout=2.0),
        posture=PostureConfig(fcrdns=True),
    )


async def _probe(
    lab: DnssecLab, factory: Callable[..., AiosmtpdServer], host: str, hostname: str = "mail.test"
) -> tuple[ProbeResult, CheckReport, dict[str, float]]:
    server = factory(host=host, hostname=hostname)
    result = await Prober().probe(*compiled(host, "m", _module(lab, server.port)))
    assert result.success, describe(result)  # posture never changes it
    (report,) = result.posture
    assert report.check == "fcrdns"
    return result, report, {name: value for name, _, value in report.samples}


async def test_a_ptr_that_confirms(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    result, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.1", "mail.example.test")
    assert samples == {MATCH: 1, NAME_MATCH: 1}
    assert report.reasons == (
        "127.0.0.1 has PTR mail.example.test, which resolves back to it: confirmed",
        "the PTR name is the banner and ehlo host name",
    )
    details = dict(report.details)
    assert details["ptr_security"] == "secure"  # the lab's in-addr.arpa. is signed
    assert details["confirmed_names"] == ["mail.example.test"]

    state = SeriesState(
        (("target", "127.0.0.1"), ("module", "m")), buckets=Buckets((1.0,)), phase_histograms=False
    )
    scheduled = series_text(state, result)  # what /metrics shows for the series
    assert 'smtp_fcrdns_match{target="127.0.0.1",module="m"} 1\n' in scheduled
    assert 'smtp_fcrdns_banner_name_match{target="127.0.0.1",module="m"} 1\n' in scheduled

    body = render_probe_result(result, openmetrics=False).decode()  # /probe: no target labels
    assert "smtp_fcrdns_match 1\n" in body and "smtp_fcrdns_banner_name_match 1\n" in body
    assert 'smtp_posture_last_run_timestamp_seconds{check="fcrdns"}' in body
    document = json.loads(json.dumps(probe_json(result)))
    assert document["posture"]["fcrdns"]["server_names"] == {
        "banner": "mail.example.test",
        "ehlo": "mail.example.test",
    }
    assert "    127.0.0.1 has PTR mail.example.test, which resolves back to it: confirmed" in format_text(
        result
    )


async def test_a_banner_name_mismatch_is_advice_only(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    result, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.1", "mail.test")
    assert samples == {MATCH: 1, NAME_MATCH: 0}
    body = render_probe_result(result, openmetrics=False).decode()
    assert "smtp_fcrdns_match 1\n" in body and "smtp_fcrdns_banner_name_match 0\n" in body
    assert report.reasons[1] == (
        "no PTR name (mail.example.test) equals the server's own (banner mail.test, ehlo mail.test): "
        "advice only, RFC 5321 section 4.1.4 forbids refusing mail for it"
    )


async def test_one_of_several_ptr_names_confirms(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    _, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.4", "MX4.example.test")
    assert samples == {MATCH: 1, NAME_MATCH: 1}  # host names compare without case
    assert dict(report.details)["confirmed_names"] == ["mx4.example.test"]
    assert sorted(dict(report.details)["ptr_names"]) == ["mx4.example.test", "stale.example.test"]  # type: ignore[arg-type]


async def test_a_ptr_that_does_not_confirm(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    _, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.2", "other.example.test")
    assert samples == {MATCH: 0, NAME_MATCH: 1}  # the names agree, the forward DNS does not
    assert report.reasons[0] == (
        "127.0.0.2 has PTR other.example.test, none resolving back to it (other.example.test A 127.0.0.9): "
        "not confirmed"
    )
    _, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.5")
    assert samples == {MATCH: 0, NAME_MATCH: 0}
    assert report.reasons[0] == (
        "127.0.0.5 has PTR gone.example.test, none resolving back to it (gone.example.test does not exist): "
        "not confirmed"
    )


async def test_no_ptr(lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]) -> None:
    _, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.3")
    assert samples == {MATCH: 0, NAME_MATCH: 0}
    assert report.reasons == (
        "127.0.0.3 has no PTR record (NXDOMAIN): not confirmed",
        "no PTR name to compare with the banner or EHLO host name",
    )


async def test_a_bogus_ptr_is_not_confirmed(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    _, report, samples = await _probe(lab, smtp_server_factory, "127.0.0.6", "mail.example.test")
    assert samples == {MATCH: 0, NAME_MATCH: 0}  # a sender's resolver would not see the PTR either
    assert report.reasons[0].startswith("127.0.0.6: PTR lookup failed (6.0.0.127.in-addr.arpa PTR: bogus")
    assert dict(report.details)["ptr_security"] == "bogus"


async def test_ipv6_confirms_by_aaaa(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    _, report, samples = await _probe(lab, smtp_server_factory, "::1", "v6.example.test")
    assert samples == {MATCH: 1, NAME_MATCH: 1}
    assert report.reasons[0] == "::1 has PTR v6.example.test, which resolves back to it: confirmed"


async def test_no_connection_nothing_to_check(
    lab: DnssecLab, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    server = smtp_server_factory()
    port = server.port
    server.stop()  # nothing listens there any more: the connect is refused
    result = await Prober().probe(*compiled("127.0.0.1", "m", _module(lab, port)))
    assert not result.success
    (report,) = result.posture
    assert report.samples == ()
    assert report.reasons == ("the probe connected to no address: nothing to check",)
