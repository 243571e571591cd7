"""The metrics renderer on results a hostile server could cause, checked by the real parsers."""

from __future__ import annotations

import dataclasses
import subprocess
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from smtp_exporter.metrics import (
    Buckets,
    ExporterStats,
    HealthMetrics,
    MetricsStore,
    SeriesState,
    render_probe_result,
)
from smtp_exporter.metrics.exposition import SERIES_FAMILIES
from smtp_exporter.metrics.families import MAX_EXTENSIONS, MAX_LABEL_VALUE_CHARS
from smtp_exporter.model import (
    AddressInfo,
    Failure,
    FailureReason,
    MXInfo,
    Phase,
    PhaseResult,
    ProbeResult,
    ServerInfo,
    TLSInfo,
)
from smtp_exporter.scheduler import MAX_START_GRID, MIN_START_GRID, schedule_phase, shard_of, start_grid
from smtp_exporter.web.app import scrape_deadline
from tests.helpers import require_binary, scrape_text, series_text

NASTY = 'CN=evil "quoted" \\ back\nslash' + "x" * 5000


def _result(*, success: bool, target: str = "mx.test:25") -> ProbeResult:
    failure = None if success else Failure(Phase.RCPT, FailureReason.REPLY_PERMANENT, "550 no")
    phases = (
        PhaseResult(Phase.CONNECT, 0.001),
        PhaseResult(Phase.BANNER, 0.002, 220, "mx.test ESMTP"),
        PhaseResult(Phase.EHLO, 0.001, 250, "2.0.0 ok"),
        PhaseResult(Phase.EHLO, 0.001, 250, "2.0.0 ok"),  # a repeated phase is exported once
        PhaseResult(Phase.RCPT, 0.003, 250 if success else 550, "5.1.1 no" if not success else "r"),
    )
    extensions = (*((f"X-{i}", ()) for i in range(200)), ("SIZE", ("1000",)), ("SIZE", ("1000",)))
    return ProbeResult(
        target=target,
        module="m",
        success=success,
        start_timestamp=time.time(),
        duration_seconds=0.0123,
        phases=phases,
        failure=failure,
        tls=TLSInfo(
            "TLSv1.3", "TLS_AES_128_GCM_SHA256", False, "expired", 1.6e9, 1.9e9, NASTY, NASTY, (), "ab" * 32
        ),
        server=ServerInfo("220 hi", "mx.test", extensions),
        address=AddressInfo("::1", 25, 6),
        mx=MXInfo("mx1.test", 10),
    )


def _scrape(store: MetricsStore, *, openmetrics: bool) -> str:
    health = HealthMetrics(ExporterStats()).render(openmetrics=openmetrics)
    body = health + b"".join(store.render(openmetrics=openmetrics))
    return (body + (b"# EOF\n" if openmetrics else b"")).decode()


def test_hostile_label_values_are_bounded_escaped_and_parse() -> None:
    store = MetricsStore()
    for i, success in enumerate((True, False)):
        state = SeriesState(
            (("target", f"t{i}"), ("module", "m"), ("mx_host", "mx1.test"), ("team", 'a"b\\c\nd')),
            buckets=Buckets((0.01, 0.1, 1.0)),
            phase_histograms=True,
        )
        store.record(state, _result(success=success))
        store.record(state, _result(success=success))
    text = _scrape(store, openmetrics=False)
    samples = [s for family in parse_text(text) for s in family.samples]
    cert = [s for s in samples if s.name == "smtp_probe_tls_cert_info"]
    assert len(cert) == 2
    assert all(len(s.labels["subject"]) == MAX_LABEL_VALUE_CHARS for s in cert)
    assert cert[0].labels["subject"].startswith('CN=evil "quoted" \\ back\nslash')
    assert {s.labels["team"] for s in samples if s.name == "smtp_probe_success"} == {'a"b\\c\nd'}
    extensions = [s for s in samples if s.name == "smtp_probe_extension_info" and s.labels["target"] == "t0"]
    assert len(extensions) == MAX_EXTENSIONS
    ehlo = [
        s
        for s in samples
        if s.name == "smtp_probe_phase_duration_seconds" and s.labels.get("phase") == "ehlo"
    ]
    assert len(ehlo) == 2  # once per series
    # In mx_mode each the series has mx_host already; mx_info does not repeat it.
    mx_info = [s for s in samples if s.name == "smtp_probe_mx_info"]
    assert mx_info and all(s.labels["preference"] == "10" for s in mx_info)
    assert next(s.value for s in samples if s.name == "smtp_probes_total" and s.labels["target"] == "t1") == 2
    failures = [s for s in samples if s.name == "smtp_probe_failures_total"]
    assert [(s.labels["target"], s.labels["phase"], s.labels["reason"], s.value) for s in failures] == [
        ("t1", "rcpt", "reply_permanent", 2)
    ]
    assert not [s for s in samples if s.name == "smtp_probe_last_failure_info" and s.labels["target"] == "t0"]

    run = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stdout + run.stderr

    om = _scrape(store, openmetrics=True)
    families = {family.name: family for family in parse_openmetrics(om)}
    assert families["smtp_probe_failures"].type == "counter"
    assert families["smtp_probe_tls_cert"].type == "info"
    assert families["smtp_probe_phase_duration_distribution_seconds"].type == "histogram"


def test_histograms_restart_only_when_their_buckets_change() -> None:
    state = SeriesState(
        (("target", "t"), ("module", "m")), buckets=Buckets((0.01, 1.0)), phase_histograms=False
    )
    store = MetricsStore()
    store.record(state, _result(success=True))
    unchanged = {"blackbox_names": False, "delivery_buckets": Buckets(())}
    store.reconfigure(state, buckets=Buckets((0.01, 1.0)), phase_histograms=False, **unchanged)
    text = scrape_text(store)
    assert 'smtp_probe_duration_distribution_seconds_bucket{target="t",module="m",le="0.01"} 0' in text
    assert 'smtp_probe_duration_distribution_seconds_count{target="t",module="m"} 1' in text
    store.reconfigure(state, buckets=Buckets((0.5, 5.0)), phase_histograms=True, **unchanged)
    text = scrape_text(store)
    assert 'le="0.01"' not in text
    assert 'smtp_probe_duration_distribution_seconds_count{target="t",module="m"} 0' in text
    assert "smtp_probes_total" in text  # counters are not histograms: they continue
    store.record(state, _result(success=True))
    text = scrape_text(store)
    assert 'smtp_probe_duration_distribution_seconds_bucket{target="t",module="m",le="0.5"} 1' in text
    assert 'smtp_probes_total{target="t",module="m"} 2' in text
    assert (
        'smtp_probe_phase_duration_distribution_seconds_count{target="t",module="m",phase="rcpt"} 1' in text
    )


def test_probe_body_has_blackbox_names_and_no_target_labels() -> None:
    body = render_probe_result(_result(success=False), openmetrics=False).decode()
    samples = {s.name: s for family in parse_text(body) for s in family.samples}
    assert samples["probe_success"].value == 0
    assert samples["probe_duration_seconds"].value == 0.0123
    assert samples["smtp_probe_ip_protocol"].value == 6
    assert samples["smtp_probe_mx_info"].labels == {"mx_host": "mx1.test", "preference": "10"}
    assert "target" not in body and "smtp_probes_total" not in body
    om = render_probe_result(_result(success=True), openmetrics=True).decode()
    assert om.endswith("# EOF\n") and list(parse_openmetrics(om))


def test_a_scrape_writes_the_families_in_exposition_order() -> None:
    # The scrape writes each family once, in exposition order, with all its series' lines.
    store = MetricsStore()
    for success, target in ((True, "a.test:25"), (False, "b.test:25")):
        state = SeriesState(
            (("target", target), ("module", "m")), buckets=Buckets((1.0,)), phase_histograms=True
        )
        store.record(state, _result(success=success, target=target))
    text = _scrape(store, openmetrics=False)
    written = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE smtp_probe")]
    exposition = [
        family.name
        for family in SERIES_FAMILIES
        if family.name.startswith("smtp_probe") and f"# TYPE {family.name} " in text
    ]
    assert written == exposition and len(written) > 20
    assert list(parse_text(text))  # every line whole: its head written back


def test_empty_store_renders_nothing() -> None:
    assert list(MetricsStore().render(openmetrics=False)) == []


def test_scrape_deadline() -> None:
    assert scrape_deadline(None, 10.0) == 10.0
    assert scrape_deadline("garbage", 10.0) == 10.0
    assert scrape_deadline("nan", 10.0) == 10.0
    assert scrape_deadline("-3", 10.0) == 10.0
    assert scrape_deadline("5", 10.0) == 4.5
    assert scrape_deadline("30", 10.0) == 10.0
    assert scrape_deadline("0.8", 10.0) == 0.4


def test_shard_of_is_a_stable_documented_function() -> None:
    # Pinned values: changing the function would silently move targets between shards.
    assert [shard_of(t, 10) for t in ("mx1.example.org:25", "example.org", "[::1]:25")] == [0, 3, 8]
    assert all(shard_of("mx1.example.org:25", count) == 0 for count in (1,))
    targets = [f"mx{i}.example.org" for i in range(3000)]
    counts = [0, 0, 0]
    for target in targets:
        counts[shard_of(target, 3)] += 1
    assert sum(counts) == 3000 and min(counts) > 850  # roughly even
    phases = [schedule_phase(t, "smtp_handshake") for t in targets]
    assert all(0 <= p < 1 for p in phases)
    assert min(phases) < 0.01 and max(phases) > 0.99  # spread over the interval
    assert schedule_phase("mx1.example.org:25", "smtp_handshake") == schedule_phase(
        "mx1.example.org:25", "smtp_handshake"
    )


def test_the_start_step_holds_about_ten_probes_within_its_bounds() -> None:
    # 10,000 targets every minute, a shard of a quarter of 1,000 probes/s, 1,000 probes/s.
    assert [start_grid(rate) for rate in (10_000 / 60, 250, 1000)] == [0.06, 0.04, 0.01]
    assert start_grid(5000) == MIN_START_GRID  # never finer: the loop's clock is in milliseconds
    assert start_grid(10) == start_grid(0) == MAX_START_GRID  # never coarser: starts stay near their phase
    assert start_grid(151) == start_grid(151.4) == 0.066  # whole milliseconds: small changes keep the grid


def test_histogram_lines_are_exact_and_cumulative() -> None:
    state = SeriesState(
        (("target", "t"), ("module", "m")), buckets=Buckets((0.01, 1.0)), phase_histograms=False
    )
    durations = (0.0078125, 0.5, 0.5, 7.0)  # exact in binary: an exact sum
    results = [dataclasses.replace(_result(success=True), duration_seconds=d) for d in durations]
    name = "smtp_probe_duration_distribution_seconds"
    lines = [line for line in series_text(state, *results).splitlines() if line.startswith(name)]
    assert lines == [
        f'{name}_bucket{{target="t",module="m",le="0.01"}} 1',
        f'{name}_bucket{{target="t",module="m",le="1.0"}} 3',
        f'{name}_bucket{{target="t",module="m",le="+Inf"}} 4',
        f'{name}_count{{target="t",module="m"}} 4',
        f'{name}_sum{{target="t",module="m"}} 8.0078125',
    ]
