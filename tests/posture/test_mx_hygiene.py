"""mx_hygiene against a real DNS server on loopback, through the posture runner and through the
prober (the scheduler's and /probe's path): every problem, the interval, and the output forms.

The checks' data cases call `run_posture` with a result of no conversation, so that MX hosts with
global addresses (the clean control) are only DNS data: nothing connects to them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable

import pytest

from smtp_exporter.config.schema import DNSConfig, ModuleConfig, PostureConfig
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, ProbeResult
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.mx_hygiene import PROBLEMS
from smtp_exporter.posture.runner import PostureMemory, run_posture
from smtp_exporter.presentation import format_text, probe_json
from smtp_exporter.probe import Prober
from tests.helpers import series_text
from tests.probe.common import compiled, describe, module
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.dns_server import DnsServer

RECORDS = {
    "clean.test": {"MX": ["10 mx1.clean.test.", "20 mx2.clean.test."]},
    "mx1.clean.test": {"A": "1.1.1.1"},  # global addresses: DNS data only, nothing connects
    "mx2.clean.test": {"AAAA": "2001:4860:4860::8888", "A": "8.8.8.8"},
    "nullmx.test": {"MX": "0 ."},
    "nullmx-pref.test": {"MX": "10 ."},
    "nullmx-mixed.test": {"MX": ["0 .", "10 mx1.clean.test."]},
    "nomx.test": {"A": "8.8.4.4"},
    "cname.test": {"MX": "10 alias.cname.test."},
    "alias.cname.test": {"CNAME": "mx1.clean.test."},
    "lame.test": {"MX": ["10 missing.lame.test.", "20 noaddr.lame.test.", "30 mx1.clean.test."]},
    "noaddr.lame.test": {"TXT": "no address here"},
    "private.test": {"MX": ["10 lan.private.test.", "20 v6.private.test."]},
    "lan.private.test": {"A": "10.1.2.3"},
    "v6.private.test": {"AAAA": "fd00::25"},
    "dup.test": {"MX": ["10 mx1.clean.test.", "20 mx1.clean.test."]},
    "halfbroken.test": {"MX": "10 broken.halfbroken.test."},
    "loop.test": {"MX": "10 mail.loop.test."},
    "mail.loop.test": {"A": "127.0.0.1"},
}


@pytest.fixture
def server(dns_server: Callable[..., DnsServer]) -> DnsServer:
    return dns_server(RECORDS, servfail=["broken.test", "broken.halfbroken.test"])


def _module(server: DnsServer, *, interval: float = 300.0, **changes: object) -> ModuleConfig:
    return module(
        mx=True,
        dns=DNSConfig(nameservers=(server.nameserver,), timeout=1.0),
        posture=PostureConfig(interval=interval, mx_hygiene=True),
        **changes,
    )


def _nothing(domain: str) -> ProbeResult:
    return ProbeResult(domain, "m", False, 0.0, 0.0, (), None)


async def _problems(
    server: DnsServer, domain: str
) -> tuple[dict[str, float], tuple[str, ...], dict[str, object]]:
    settings = _module(server)
    reports = await run_posture(_nothing(domain), domain, settings, PostureDNS(settings.dns), None)
    (report,) = reports
    assert report.check == "mx_hygiene"
    samples = {labels: value for name, labels, value in report.samples if name == "smtp_mx_problem"}
    assert set(samples) == {f'problem="{p}"' for p in PROBLEMS}  # every problem, 0 or 1
    found = {labels[9:-1]: value for labels, value in samples.items()}
    return found, report.reasons, dict(report.details)


def _on(found: dict[str, float]) -> set[str]:
    return {problem for problem, value in found.items() if value == 1}


async def test_a_clean_domain_has_no_problem(server: DnsServer) -> None:
    found, reasons, details = await _problems(server, "clean.test")
    assert _on(found) == set()
    assert reasons == ("2 MX records, no problem found",)
    assert details["mx_records"] == [
        {"preference": 10, "host": "mx1.clean.test"},
        {"preference": 20, "host": "mx2.clean.test"},
    ]
    assert details["mx_security"] == "insecure"


@pytest.mark.parametrize(
    ("domain", "problems", "reason"),
    [
        ("nullmx.test", {"null_mx"}, "nullmx.test has a null MX (RFC 7505): it accepts no mail"),
        (
            "nullmx-pref.test",
            {"null_mx_invalid"},
            "nullmx-pref.test has a null MX with preference 10, not 0: invalid (RFC 7505 section 3)",
        ),
        (
            "nullmx-mixed.test",
            {"null_mx_invalid"},
            "nullmx-mixed.test has a null MX beside 1 other MX record(s): invalid (RFC 7505 section 3)",
        ),
        (
            "nomx.test",
            {"no_mx"},
            "nomx.test has no MX records: mail would go to its own A/AAAA (RFC 5321 section 5.1)",
        ),
        (
            "gone.test",
            {"no_mx"},
            "gone.test does not exist: mail would go to its own A/AAAA (RFC 5321 section 5.1)",
        ),
        ("cname.test", {"cname"}, "MX alias.cname.test is a CNAME to mx1.clean.test (RFC 2181 section 10.3)"),
        ("lame.test", {"unresolvable"}, "MX missing.lame.test does not exist"),
        (
            "private.test",
            {"private_address"},
            "MX lan.private.test resolves to 10.1.2.3: a private or reserved address",
        ),
        ("dup.test", {"duplicate"}, "MX mx1.clean.test is listed more than once"),
        ("broken.test", {"lookup_failed"}, "MX lookup failed: broken.test MX: bogus (SERVFAIL)"),
        (
            "halfbroken.test",
            {"lookup_failed"},
            "address lookup failed: broken.halfbroken.test A: bogus (SERVFAIL)",
        ),
    ],
)
async def test_each_problem(server: DnsServer, domain: str, problems: set[str], reason: str) -> None:
    found, reasons, _ = await _problems(server, domain)
    assert _on(found) == problems, reasons
    assert reason in reasons


async def test_every_finding_is_reported(server: DnsServer) -> None:
    _, reasons, _ = await _problems(server, "lame.test")
    assert "MX noaddr.lame.test has no A or AAAA records" in reasons
    _, reasons, _ = await _problems(server, "private.test")
    assert "MX v6.private.test resolves to fd00::25: a private or reserved address" in reasons


async def test_the_record_count(server: DnsServer) -> None:
    settings = _module(server)
    for domain, count in (("clean.test", 2), ("nullmx.test", 1), ("nomx.test", 0), ("lame.test", 3)):
        (report,) = await run_posture(_nothing(domain), domain, settings, PostureDNS(settings.dns), None)
        assert ("smtp_mx_records", "", count) in report.samples
    (report,) = await run_posture(
        _nothing("broken.test"), "broken.test", settings, PostureDNS(settings.dns), None
    )
    assert not any(name == "smtp_mx_records" for name, _, _ in report.samples)  # unknown, not 0


async def test_a_check_runs_at_most_once_per_interval(server: DnsServer) -> None:
    settings = _module(server, interval=1.0)
    client = PostureDNS(settings.dns)
    memory = PostureMemory()
    (first,) = await run_posture(_nothing("clean.test"), "clean.test", settings, client, memory)
    asked = len(server.queries)
    (again,) = await run_posture(_nothing("clean.test"), "clean.test", settings, client, memory)
    assert again is first  # kept, not rerun
    assert len(server.queries) == asked
    (other,) = await run_posture(_nothing("clean.test"), "clean.test", settings, client, memory, "mx1")
    assert other is not first  # another series' memory
    await asyncio.sleep(1.0)
    (later,) = await run_posture(_nothing("clean.test"), "clean.test", settings, client, memory)
    assert later.ran_at >= first.ran_at + 0.95
    assert len(server.queries) > asked


async def test_a_check_that_overruns_the_timeout_says_so(dns_server: Callable[..., DnsServer]) -> None:
    slow = dns_server(RECORDS, delays={"clean.test": 2.0})
    settings = dataclasses.replace(
        _module(slow), timeout=0.3, dns=DNSConfig(nameservers=(slow.nameserver,), timeout=5.0)
    )
    (report,) = await run_posture(
        _nothing("clean.test"), "clean.test", settings, PostureDNS(settings.dns), None
    )
    assert report.reasons == ("did not finish within 0.3s",)
    assert report.samples == ()


async def test_through_the_prober_success_is_the_conversations(
    server: DnsServer, smtp_server: AiosmtpdServer
) -> None:
    target, compiled_module, text = compiled("loop.test", "m", _module(server, port=smtp_server.port))
    memory = PostureMemory()
    result = await Prober().probe(target, compiled_module, text, posture=memory)
    assert result.success, describe(result)
    (report,) = result.posture
    assert ("smtp_mx_problem", 'problem="private_address"', 1) in report.samples
    assert memory.get(None, "mx_hygiene") is report
    again = await Prober().probe(target, compiled_module, text, posture=memory)
    assert again.posture == (report,)

    null_target, null_module, null_text = compiled("nullmx.test", "m", _module(server, port=smtp_server.port))
    failed = await Prober().probe(null_target, null_module, null_text)
    assert failed.failure is not None and failed.failure.reason is FailureReason.NULL_MX
    (null_report,) = failed.posture  # posture runs whatever the conversation's outcome
    assert ("smtp_mx_problem", 'problem="null_mx"', 1) in null_report.samples


async def test_each_mx_keeps_posture_per_series(server: DnsServer, smtp_server: AiosmtpdServer) -> None:
    target, compiled_module, text = compiled("loop.test", "m", _module(server, port=smtp_server.port))
    memory = PostureMemory()
    (result,) = await Prober().probe_each_mx(target, compiled_module, text, posture=memory)
    assert result.success, describe(result)
    assert memory.get("mail.loop.test", "mx_hygiene") is result.posture[0]
    assert memory.get(None, "mx_hygiene") is None


async def test_output_forms(server: DnsServer, smtp_server: AiosmtpdServer) -> None:
    target, compiled_module, text = compiled("loop.test", "m", _module(server, port=smtp_server.port))
    result = await Prober().probe(target, compiled_module, text)
    ran_at = result.posture[0].ran_at

    body = render_probe_result(result, openmetrics=False).decode()
    assert "# TYPE smtp_mx_records gauge\nsmtp_mx_records 1\n" in body
    assert 'smtp_mx_problem{problem="private_address"} 1\n' in body
    assert 'smtp_mx_problem{problem="cname"} 0\n' in body
    assert f'smtp_posture_last_run_timestamp_seconds{{check="mx_hygiene"}} {ran_at!r}\n' in body
    assert "smtp_probe_success 1\n" in body

    state = SeriesState(
        (("target", "loop.test"), ("module", "m")), buckets=Buckets((1.0,)), phase_histograms=False
    )
    scheduled = series_text(state, result)
    assert 'smtp_mx_problem{target="loop.test",module="m",problem="private_address"} 1\n' in scheduled
    assert 'smtp_mx_records{target="loop.test",module="m"} 1\n' in scheduled

    document = json.loads(json.dumps(probe_json(result)))
    hygiene = document["posture"]["mx_hygiene"]
    assert hygiene["last_run_timestamp"] == ran_at
    assert hygiene["problems"] == ["private_address"]
    assert hygiene["reasons"] == ["MX mail.loop.test resolves to 127.0.0.1: a private or reserved address"]
    assert hygiene["hosts"] == [
        {
            "host": "mail.loop.test",
            "addresses": ["127.0.0.1"],
            "cname": None,
            "security": {"a": "insecure", "aaaa": "insecure"},
        }
    ]

    text_form = format_text(result)
    assert "Posture (never changes the probe's success):\n  mx_hygiene, run " in text_form
    assert "    MX mail.loop.test resolves to 127.0.0.1: a private or reserved address" in text_form


async def test_without_posture_nothing_is_added(server: DnsServer, smtp_server: AiosmtpdServer) -> None:
    settings = dataclasses.replace(_module(server, port=smtp_server.port), posture=None)
    result = await Prober().probe(*compiled("loop.test", "m", settings))
    assert result.success and result.posture == ()
    assert probe_json(result)["posture"] == {}
    assert "smtp_posture" not in render_probe_result(result, openmetrics=False).decode()
