"""dnsbl against real DNS: zones served by nsd, asked through the validating unbound of the DNSSEC
lab (tests/servers/dnssec.py), the way a module's `dns.nameservers` reaches a real DNSBL.

zen.test. is a healthy zone (it lists 127.0.0.2, not 127.0.0.1) holding listings with codes and
TXT reasons, each Spamhaus error answer, an answer outside 127/8 and an IPv6 listing; the other
zones fail RFC 5782's health test in each way there is."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator

import pytest

from smtp_exporter.config.schema import DNSBLConfig, DNSConfig, IPProtocol, ModuleConfig, PostureConfig
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import AddressInfo, CheckReport, ProbeResult
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.dnsbl import STATES, query_name
from smtp_exporter.posture.runner import run_posture
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.probe.common import compiled, describe, module
from tests.probe.test_dns import needs_ipv6  # noqa: F401  (a fixture)
from tests.servers import scripted
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dnssec import DnssecLab
from tests.servers.scripted import ScriptedServer

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]

V6 = "2001:db8::25"


@pytest.fixture(scope="module")
def lab() -> Iterator[DnssecLab]:
    with DnssecLab() as lab:
        zen = lab.zone("zen.test.", signed=False)
        zen.add("2.0.0.127.zen.test", "A", "127.0.0.2")  # RFC 5782 section 5's test entry
        lab.txt("2.0.0.127.zen.test", "test entry")
        zen.add("10.2.0.192.zen.test", "A", "127.0.0.4")
        lab.txt("10.2.0.192.zen.test", "https://check.zen.test/query/ip/192.0.2.10")
        zen.add("11.2.0.192.zen.test", "A", "127.0.0.10").add("11.2.0.192.zen.test", "A", "127.0.0.2")
        lab.txt("11.2.0.192.zen.test", "listed in SBL").txt("11.2.0.192.zen.test", "listed in PBL")
        zen.add("12.2.0.192.zen.test", "A", "127.0.0.3")  # listed without a TXT reason
        for code in (252, 254, 255):
            zen.add(f"{code}.2.0.192.zen.test", "A", f"127.255.255.{code}")
        zen.add("66.2.0.192.zen.test", "A", "198.51.100.66")  # outside 127/8
        zen.add("1.0.0.127.zen.test", "TXT", '"a TXT but no A: still not listed"')
        zen.add(query_name(V6, "zen.test"), "A", "127.0.0.5")
        lab.txt(query_name(V6, "zen.test"), "IPv6 listing")
        zen.add(query_name("::1", "zen.test"), "A", "127.0.0.6")

        # Fails the health test: 127.0.0.2 not listed (an emptied or mistyped zone).
        lab.zone("empty.test.", signed=False).add("10.2.0.192.empty.test", "A", "127.0.0.2")
        # Fails it: 127.0.0.1 listed (a zone that lists everything).
        lab.zone("all.test.", signed=False).add("*.all.test", "A", "127.0.0.2")
        # Fails it: every query refused as from a public resolver (Spamhaus' 127.255.255.254).
        lab.zone("open.test.", signed=False).add("*.open.test", "A", "127.255.255.254")
        # A signed zone: a DNSBL's DNSSEC does not change its answers' meaning.
        signed = lab.zone("signed.test.")
        signed.add("2.0.0.127.signed.test", "A", "127.0.0.2").add("10.2.0.192.signed.test", "A", "127.0.0.2")
        # A listing whose signature is broken: a validating resolver gives SERVFAIL (bogus).
        signed.add("13.2.0.192.signed.test", "A", "127.0.0.2").corrupt("13.2.0.192.signed.test", "A")
        # The probe's own targets: an MX list whose first host refuses connections, whose second
        # greets 421 (the probe moves on), whose third answers; a host with an A and an AAAA.
        lab.add("failover.example.test", "MX", "10 refuses.example.test.")
        lab.add("failover.example.test", "MX", "20 busy.example.test.")
        lab.add("failover.example.test", "MX", "30 works.example.test.")
        lab.add("refuses.example.test", "A", "127.0.0.3").add("busy.example.test", "A", "127.0.0.2")
        lab.add("works.example.test", "A", "127.0.0.1")
        lab.add("dual.example.test", "A", "127.0.0.1").add("dual.example.test", "AAAA", "::1")
        lab.reload()
        yield lab


def _module(
    lab: DnssecLab, zones: tuple[str, ...], addresses: tuple[str, ...] = (), **changes: object
) -> ModuleConfig:
    return module(
        dns=DNSConfig(nameservers=(lab.resolver.nameserver,), timeout=2.0),
        posture=PostureConfig(dnsbl=DNSBLConfig(zones=zones, addresses=addresses)),
        **changes,
    )


def _connected_to(ip: str | None) -> ProbeResult:
    address = None if ip is None else AddressInfo(ip, 25, 6 if ":" in ip else 4)
    return ProbeResult("t", "m", False, 0.0, 0.0, (), None, address=address)


async def _report(
    lab: DnssecLab, zones: tuple[str, ...], addresses: tuple[str, ...], ip: str | None = None
) -> CheckReport:
    settings = _module(lab, zones, addresses)
    (report,) = await run_posture(_connected_to(ip), "t", settings, PostureDNS(settings.dns), None)
    assert report.check == "dnsbl"
    return report


def _series(report: CheckReport, zone: str, address: str) -> tuple[float, str, float]:
    """(listed, the state whose series is 1, return code); every state's series present."""
    labels = f'zone="{zone}",address="{address}"'
    samples = {(name, lab): value for name, lab, value in report.samples}
    states = {s: samples[("smtp_dnsbl_state", f'{labels},state="{s}"')] for s in STATES}
    assert sorted(states.values()) == [0, 0, 0, 1], states
    (state,) = (s for s, v in states.items() if v == 1)
    return samples[("smtp_dnsbl_listed", labels)], state, samples[("smtp_dnsbl_return_code", labels)]


def _entry(report: CheckReport, zone: str, address: str) -> dict[str, object]:
    (found,) = (z for z in dict(report.details)["zones"] if z["zone"] == zone)  # type: ignore[attr-defined]
    (entry,) = (a for a in found["addresses"] if a["address"] == address)
    return entry  # type: ignore[no-any-return]


def test_query_names_follow_rfc_5782() -> None:
    assert query_name("192.0.2.99", "zen.example") == "99.2.0.192.zen.example"
    assert query_name("::1", "zen.example") == "1." + "0." * 31 + "zen.example"
    assert query_name("2001:db8::25", "bl.example") == (
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
    )


async def test_a_listing_has_its_code_and_txt_reason(lab: DnssecLab) -> None:
    report = await _report(lab, ("zen.test",), ("192.0.2.10",))
    assert _series(report, "zen.test", "192.0.2.10") == (1, "listed", 4)
    entry = _entry(report, "zen.test", "192.0.2.10")
    assert entry["answers"] == ["127.0.0.4"]
    assert entry["reason"] == "listed with 127.0.0.4: https://check.zen.test/query/ip/192.0.2.10"
    assert report.reasons == (
        "192.0.2.10 in zen.test: listed with 127.0.0.4: https://check.zen.test/query/ip/192.0.2.10",
    )


async def test_several_codes_report_the_lowest_and_every_reason(lab: DnssecLab) -> None:
    report = await _report(lab, ("zen.test",), ("192.0.2.11", "192.0.2.12"))
    assert _series(report, "zen.test", "192.0.2.11") == (1, "listed", 2)
    entry = _entry(report, "zen.test", "192.0.2.11")
    assert sorted(entry["answers"]) == ["127.0.0.10", "127.0.0.2"]  # type: ignore[arg-type]
    assert "listed in SBL" in str(entry["reason"]) and "listed in PBL" in str(entry["reason"])
    assert _series(report, "zen.test", "192.0.2.12") == (1, "listed", 3)
    assert _entry(report, "zen.test", "192.0.2.12")["reason"] == (
        "listed with 127.0.0.3: no reason published (no TXT record)"
    )


async def test_not_listed(lab: DnssecLab) -> None:
    # 192.0.2.20 has no name (NXDOMAIN); 127.0.0.1 has a TXT but no A record (NOERROR, no data).
    report = await _report(lab, ("zen.test",), ("192.0.2.20", "127.0.0.1"))
    assert _series(report, "zen.test", "192.0.2.20") == (0, "not_listed", 0)
    assert _entry(report, "zen.test", "192.0.2.20")["reason"] == "not listed (NXDOMAIN)"
    assert _series(report, "zen.test", "127.0.0.1") == (0, "not_listed", 0)
    assert _entry(report, "zen.test", "127.0.0.1")["reason"] == "not listed (no A record)"


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (252, "typing error in the DNSBL name"),
        (254, "query refused: sent through a public or open resolver"),
        (255, "query refused: excessive number of queries"),
    ],
)
async def test_spamhaus_error_codes_are_errors_never_listings(
    lab: DnssecLab, code: int, meaning: str
) -> None:
    address = f"192.0.2.{code}"
    report = await _report(lab, ("zen.test",), (address,))
    assert _series(report, "zen.test", address) == (0, "error", code)
    assert _entry(report, "zen.test", address)["reason"] == (
        f"error answer 127.255.255.{code} ({meaning}): not a listing"
    )


async def test_an_answer_outside_127_8_is_an_error(lab: DnssecLab) -> None:
    report = await _report(lab, ("zen.test",), ("192.0.2.66",))
    assert _series(report, "zen.test", "192.0.2.66") == (0, "error", 0)
    assert str(_entry(report, "zen.test", "192.0.2.66")["reason"]).startswith(
        "answer 198.51.100.66 is outside 127.0.0.0/8: not a DNSBL answer"
    )


async def test_ipv6_addresses_are_looked_up_by_nibbles(lab: DnssecLab) -> None:
    report = await _report(lab, ("zen.test",), (V6,), ip="::1")
    assert _series(report, "zen.test", "::1") == (1, "listed", 6)
    assert _series(report, "zen.test", V6) == (1, "listed", 5)
    assert _entry(report, "zen.test", V6)["reason"] == "listed with 127.0.0.5: IPv6 listing"


@pytest.mark.parametrize(
    ("zone", "why"),
    [
        (
            "empty.test",
            "the test address 127.0.0.2 must be listed (RFC 5782 section 5): not listed (NXDOMAIN)",
        ),
        (
            "all.test",
            "the test address 127.0.0.1 must not be listed (RFC 5782 section 5): listed with 127.0.0.2",
        ),
        (
            "open.test",
            "the test address 127.0.0.2 must be listed (RFC 5782 section 5): error answer 127.255.255.254",
        ),
    ],
)
async def test_an_unhealthy_zone_is_not_trusted(lab: DnssecLab, zone: str, why: str) -> None:
    report = await _report(lab, (zone, "zen.test"), ("192.0.2.10",))
    # Whatever the zone says of the address (listed, not listed, refused), it is not believed.
    assert _series(report, zone, "192.0.2.10") == (0, "zone_unhealthy", 0)
    (unhealthy, trusted) = report.reasons
    assert unhealthy.startswith(f"zone {zone} is unhealthy, its answers are not trusted: {why}")
    assert trusted.startswith("192.0.2.10 in zen.test: listed with 127.0.0.4")
    assert _series(report, "zen.test", "192.0.2.10") == (1, "listed", 4)  # the healthy zone still counts
    details = {z["zone"]: z for z in dict(report.details)["zones"]}  # type: ignore[attr-defined]
    assert details[zone]["healthy"] is False and details["zen.test"]["healthy"] is True


async def test_a_signed_zone_means_the_same(lab: DnssecLab) -> None:
    report = await _report(lab, ("signed.test",), ("192.0.2.10", "192.0.2.20"))
    assert _series(report, "signed.test", "192.0.2.10") == (1, "listed", 2)
    assert _series(report, "signed.test", "192.0.2.20") == (0, "not_listed", 0)


async def test_a_bogus_answer_is_an_error_not_a_listing(lab: DnssecLab) -> None:
    report = await _report(lab, ("signed.test",), ("192.0.2.13",))
    assert _series(report, "signed.test", "192.0.2.13") == (0, "error", 0)
    assert str(_entry(report, "signed.test", "192.0.2.13")["reason"]).startswith(
        "lookup failed: 13.2.0.192.signed.test A: bogus"
    )


async def test_a_zone_that_is_not_served_is_unhealthy(lab: DnssecLab) -> None:
    # Outside every served zone: unbound finds no delegation in the test root (NXDOMAIN for the
    # addresses and the test entries alike), so the health test fails rather than "not listed".
    report = await _report(lab, ("missing.test",), ("192.0.2.10",))
    assert _series(report, "missing.test", "192.0.2.10") == (0, "zone_unhealthy", 0)


async def test_the_connected_address_and_the_configured_ones(
    lab: DnssecLab, smtp_server: AiosmtpdServer
) -> None:
    settings = _module(lab, ("zen.test",), ("192.0.2.10", "127.0.0.1"), port=smtp_server.port)
    result = await Prober().probe(*compiled("127.0.0.1", "m", settings))
    assert result.success, describe(result)  # posture never changes it, listed or not
    (report,) = result.posture
    addresses = [a["address"] for a in dict(report.details)["zones"][0]["addresses"]]  # type: ignore[index]
    assert addresses == ["127.0.0.1", "192.0.2.10"]  # the connected one first, no repeat
    assert _series(report, "zen.test", "127.0.0.1") == (0, "not_listed", 0)
    assert _series(report, "zen.test", "192.0.2.10") == (1, "listed", 4)

    state = SeriesState(
        (("target", "127.0.0.1"), ("module", "m")), buckets=Buckets((1.0,)), phase_histograms=False
    )
    scheduled = series_text(state, result)  # what /metrics shows for the series
    series = 'target="127.0.0.1",module="m",zone="zen.test",address="192.0.2.10"'
    assert f"smtp_dnsbl_listed{{{series}}} 1\n" in scheduled
    assert f'smtp_dnsbl_state{{{series},state="listed"}} 1\n' in scheduled
    assert f'smtp_dnsbl_state{{{series},state="error"}} 0\n' in scheduled
    assert f"smtp_dnsbl_return_code{{{series}}} 4\n" in scheduled
    assert 'smtp_posture_last_run_timestamp_seconds{target="127.0.0.1",module="m",check="dnsbl"}' in scheduled

    body = render_probe_result(result, openmetrics=False).decode()  # /probe: no target labels
    assert 'smtp_dnsbl_listed{zone="zen.test",address="192.0.2.10"} 1\n' in body
    assert 'smtp_dnsbl_state{zone="zen.test",address="192.0.2.10",state="listed"} 1\n' in body
    assert 'smtp_dnsbl_state{zone="zen.test",address="127.0.0.1",state="not_listed"} 1\n' in body
    assert 'smtp_dnsbl_return_code{zone="zen.test",address="192.0.2.10"} 4\n' in body
    assert 'smtp_posture_last_run_timestamp_seconds{check="dnsbl"}' in body
    assert "smtp_probe_success 1\n" in body

    document = json.loads(json.dumps(probe_json(result)))
    (zone,) = document["posture"]["dnsbl"]["zones"]
    assert zone["zone"] == "zen.test" and zone["healthy"] is True
    assert zone["addresses"][1]["state"] == "listed"
    text = format_text(result)
    assert (
        "    192.0.2.10 in zen.test: listed with 127.0.0.4: https://check.zen.test/query/ip/192.0.2.10"
        in text
    )


async def test_every_address_the_probe_connected_to(lab: DnssecLab, scripted_server: ScriptedFactory) -> None:
    # MX failover: 127.0.0.3 refused the connection (not reached: not checked), 127.0.0.2 greeted
    # 421 and the probe moved on (reached: checked), 127.0.0.1 held the conversation.
    def script(n: int) -> scripted.Script:
        if n == 0:
            return [scripted.Send(b"421 4.3.2 busy, try later\r\n"), scripted.ExpectLine()]
        return scripted.minimal_conversation()

    server = await scripted_server(script, hosts=("127.0.0.2", "127.0.0.1"))
    settings = _module(lab, ("zen.test",), ("192.0.2.10",), port=server.port, mx=True)
    result = await Prober().probe(*compiled("failover.example.test", "m", settings))
    assert result.success and result.fallback, describe(result)
    assert [a.outcome.value for a in result.attempts] == ["failed", "failed", "connected"]
    (report,) = result.posture
    addresses = [a["address"] for a in dict(report.details)["zones"][0]["addresses"]]  # type: ignore[index]
    assert addresses == ["127.0.0.1", "127.0.0.2", "192.0.2.10"]
    assert _series(report, "zen.test", "127.0.0.1") == (0, "not_listed", 0)
    assert _series(report, "zen.test", "127.0.0.2") == (1, "listed", 2)  # the zone's test entry
    assert not any('address="127.0.0.3"' in labels for _, labels, _ in report.samples)


@pytest.mark.usefixtures("needs_ipv6")
async def test_both_families_addresses(lab: DnssecLab, scripted_server: ScriptedFactory) -> None:
    # ip_protocol: both in one result (/probe): the IPv4 probe's address and the IPv6 one's.
    server = await scripted_server(scripted.minimal_conversation(), hosts=("127.0.0.1", "::1"))
    settings = _module(lab, ("zen.test",), port=server.port, ip_protocol=IPProtocol.BOTH)
    result = await Prober().probe(*compiled("dual.example.test", "m", settings))
    assert result.success, describe(result)
    (report,) = result.posture
    assert _series(report, "zen.test", "127.0.0.1") == (0, "not_listed", 0)
    assert _series(report, "zen.test", "::1") == (1, "listed", 6)
    body = render_probe_result(result, openmetrics=False).decode()
    assert 'smtp_dnsbl_listed{zone="zen.test",address="::1"} 1\n' in body


async def test_nothing_to_check_says_so(lab: DnssecLab) -> None:
    report = await _report(lab, ("zen.test",), (), ip=None)
    assert report.samples == ()
    assert report.reasons == (
        "no address to check: the probe connected nowhere and dnsbl.addresses is empty",
    )
