"""Benchmark 3: the cost of one /metrics scrape at 10,000 scheduled targets with results.

The exporter probes 10,000 targets (distinct ports of the multi-port sink; every probe is a
successful smtp_full conversation, the realistic series shape of ~45 lines per target). Once
every target has a result, /metrics is fetched several times: wall time seen by the client,
CPU of the exporter during the request (nanosecond schedstat of its threads, minus the
background probing CPU measured just before), and the event-loop lag gauges it reports.

The reference, measured in the same run by this process: the same series put in ordinary
labelled prometheus_client Gauge/Counter/Histogram metrics and rendered with
`generate_latest` (what a straightforward exporter would do on every scrape).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from benchmarks.harness import BenchmarkError, Processes, cpu_seconds_precise, http_get
from benchmarks.report import BASELINE_LIMIT, Table, median, ms, ratio, verdict
from benchmarks.systems import Exporter, exporter_config, metric_value, samples, start_exporter, start_sink

TARGET_SECONDS = 0.100  # one scrape at 10k targets
TARGET_SPEEDUP = 15.0  # faster than generate_latest over the same series
QUIET_INTERVAL = 86400.0  # the longest the config allows: probing all but stops
_LABEL = re.compile(rb'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Scale:
    targets: int
    interval: float
    scrapes: int
    reference_runs: int


DEFAULT = Scale(targets=10_000, interval=10.0, scrapes=9, reference_runs=3)
QUICK = Scale(targets=300, interval=0.5, scrapes=3, reference_runs=1)


def _unescape(value: bytes) -> str:
    return value.decode().replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def reference_registry(body: bytes) -> tuple[CollectorRegistry, int]:
    """The target series of a /metrics body (families smtp_probe*) as prometheus_client metrics;
    and how many samples went in."""
    kinds: dict[str, str] = {}
    helps: dict[str, str] = {}
    grouped: dict[str, list[tuple[str, list[tuple[str, str]], float]]] = defaultdict(list)
    family = ""
    for line in body.split(b"\n"):
        if line.startswith(b"# HELP "):
            name, _, text = line[7:].decode().partition(" ")
            helps[name] = text
            continue
        if line.startswith(b"# TYPE "):
            name, _, kind = line[7:].decode().partition(" ")
            kinds[name] = kind
            family = name
            continue
        if not line or line.startswith(b"#") or not family.startswith("smtp_probe"):
            continue
        head, _, value_text = line.rpartition(b" ")
        sample_name, _, label_text = head.partition(b"{")
        labels = [(k.decode(), _unescape(v)) for k, v in _LABEL.findall(label_text)]
        grouped[family].append((sample_name.decode(), labels, float(value_text)))

    registry = CollectorRegistry(auto_describe=False)
    count = 0
    for family, rows in grouped.items():
        kind, help_text = kinds[family], helps.get(family, family)
        if kind == "histogram":
            count += _histogram(registry, family, help_text, rows)
            continue
        names = [k for k, _ in rows[0][1]]
        if kind == "counter":
            counter = Counter(family.removesuffix("_total"), help_text, names, registry=registry)
            for _, labels, number in rows:
                counter.labels(*(v for _, v in labels)).inc(number)
        else:
            gauge = Gauge(family, help_text, names, registry=registry)
            for _, labels, number in rows:
                gauge.labels(*(v for _, v in labels)).set(number)
        count += len(rows)
    return registry, count


def _histogram(
    registry: CollectorRegistry,
    family: str,
    help_text: str,
    rows: list[tuple[str, list[tuple[str, str]], float]],
) -> int:
    """A Histogram with the same buckets and the same per-bucket counts (observations at the bounds)."""
    series: dict[tuple[str, ...], list[tuple[float, float]]] = defaultdict(list)
    names: list[str] = []
    bounds: list[float] = []
    for sample, labels, value in rows:
        if not sample.endswith("_bucket"):
            continue
        own = [(k, v) for k, v in labels if k != "le"]
        names = [k for k, _ in own]
        le = float(dict(labels)["le"])
        series[tuple(v for _, v in own)].append((le, value))
        if le not in bounds:
            bounds.append(le)
    finite = sorted(b for b in bounds if b != float("inf"))
    histogram = Histogram(family, help_text, names, buckets=finite, registry=registry)
    for key, buckets in series.items():
        child = histogram.labels(*key)
        previous = 0.0
        for le, cumulative in sorted(buckets):
            for _ in range(int(cumulative - previous)):
                child.observe(le if le != float("inf") else finite[-1] * 2)
            previous = cumulative
    return len(rows)


def _wait_all_probed(exporter: Exporter, count: int, scale: Scale) -> None:
    """Wait (scraping rarely: a scrape at 10k targets is the load under test) for every result."""
    deadline = time.monotonic() + scale.interval * 3 + 60
    time.sleep(scale.interval)
    while True:
        done = sum(1 for _ in samples(exporter.scrape(), "smtp_probes_total"))
        if done >= count:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(f"only {done} of {count} targets probed")
        time.sleep(max(1.0, scale.interval / 4))


@dataclass
class Scrapes:
    walls: list[float]
    cpus: list[float]
    gzip_walls: list[float]
    gzip_cpus: list[float]
    lags: list[float]  # smtp_exporter_event_loop_lag_seconds read in each plain scrape
    body: bytes


def _scrapes(exporter: Exporter, count: int) -> Scrapes:
    """`count` scrapes 0.5 s apart, alternately plain (as curl asks) and gzip (as Prometheus asks)."""
    out = Scrapes([], [], [], [], [], b"")
    for i in range(count):
        gzip = i % 2 == 1
        headers = {"Accept-Encoding": "gzip"} if gzip else {}
        c0 = cpu_seconds_precise(exporter.pid)
        response = http_get(exporter.port, "/metrics", timeout=60.0, headers=headers)
        cpu = cpu_seconds_precise(exporter.pid) - c0
        if response.status != 200:
            raise BenchmarkError(f"/metrics answered {response.status}")
        (out.gzip_walls if gzip else out.walls).append(response.seconds)
        (out.gzip_cpus if gzip else out.cpus).append(cpu)
        if not gzip:
            out.body = response.body
            out.lags.append(metric_value(response.body, "smtp_exporter_event_loop_lag_seconds"))
        time.sleep(0.5)
    return out


def _wait_quiet(exporter: Exporter, timeout: float) -> None:
    """Until at most 2 probes completed in 2 s (after the reload to a one-day interval, the targets'
    probes are spread over a day: ~0.1/s at 10,000 targets)."""
    deadline = time.monotonic() + timeout
    last = -100.0
    while time.monotonic() < deadline:
        body = exporter.scrape()
        done = sum(value for _, value in samples(body, "smtp_probes_total"))
        if done - last <= 2:
            return
        last = done
        time.sleep(2.0)
    raise BenchmarkError("probing did not slow down after the reload to a one-day interval")


def run(quick: bool, tree: Path) -> Table:
    scale = QUICK if quick else DEFAULT
    table = Table(
        3,
        f"Scrape cost at {scale.targets:,} scheduled targets",
        ("smtp-exporter /metrics", "prometheus_client generate_latest"),
    )
    with Processes() as procs:
        sink = start_sink(procs, ok=scale.targets)
        timeout = min(5.0, scale.interval * 0.9)
        exporter = start_exporter(
            procs, exporter_config(sink.targets(), interval=scale.interval, timeout=timeout), tree=tree
        )
        _wait_all_probed(exporter, scale.targets, scale)
        c0, t0 = cpu_seconds_precise(exporter.pid), time.perf_counter()
        time.sleep(2.0)
        background = (cpu_seconds_precise(exporter.pid) - c0) / (time.perf_counter() - t0)
        busy = _scrapes(exporter, scale.scrapes)
        busy_lag_max = metric_value(exporter.scrape(), "smtp_exporter_event_loop_lag_max_seconds")
        # The same series with probing paused (same targets and results, a one-day interval):
        # the scrape's own cost, without probes and garbage collections sharing the loop.
        exporter.reload(exporter_config(sink.targets(), interval=QUIET_INTERVAL, timeout=timeout))
        _wait_quiet(exporter, scale.interval * 2 + 30)
        idle = _scrapes(exporter, scale.scrapes)
    body = idle.body
    series_lines = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))

    registry, reference_samples = reference_registry(body)
    ref_walls: list[float] = []
    ref_cpus: list[float] = []
    ref_lines = 0
    for _ in range(scale.reference_runs):
        w0, c0 = time.perf_counter(), time.process_time()
        output = generate_latest(registry)
        ref_walls.append(time.perf_counter() - w0)
        ref_cpus.append(time.process_time() - c0)
        ref_lines = sum(1 for line in output.split(b"\n") if line and not line.startswith(b"#"))

    ref_wall = median(ref_walls)
    target = f"<= {ms(TARGET_SECONDS, 0)}; >= {TARGET_SPEEDUP:.0f}x"
    for label, run_ in (
        (f"while probing {scale.targets / scale.interval:,.0f}/s", busy),
        ("probing paused (1-day interval)", idle),
    ):
        wall = median(run_.walls)
        table.add(
            f"one scrape, wall time (median), {label}",
            ms(wall),
            ms(ref_wall),
            ratio(ref_wall, wall, 1) + "x faster",
            target,
            verdict(wall <= TARGET_SECONDS and ref_wall >= TARGET_SPEEDUP * wall),
            baseline_limit=BASELINE_LIMIT,
        )
    table.add(
        "one scrape, CPU (median), probing paused",
        ms(median(idle.cpus)),
        ms(median(ref_cpus)),
        ratio(median(ref_cpus), median(idle.cpus), 1) + "x less",
    )
    table.add(
        "one gzip scrape (as Prometheus asks), wall / CPU (median), probing paused",
        f"{ms(median(idle.gzip_walls))} / {ms(median(idle.gzip_cpus))}",
    )
    table.add(
        "one scrape, wall time (min / max), while probing",
        f"{ms(min(busy.walls))} / {ms(max(busy.walls))}",
    )
    table.add(
        "samples exposed (target families / whole body)",
        f"{reference_samples:,} / {series_lines:,}",
        f"{ref_lines:,}",
    )
    table.add(
        "event-loop lag while probing: gauge read in each scrape (max) / 60 s max",
        f"{ms(max(busy.lags, default=0.0))} / {ms(busy_lag_max)}",
    )
    table.notes.append(
        f"{scale.targets:,} targets, module smtp_full, interval {scale.interval:g}s (probing "
        f"{scale.targets / scale.interval:,.0f}/s used {100 * background:.0f}% of a core); then reloaded with a "
        f"one-day interval (results kept) to measure the scrape alone. {len(idle.walls)} plain and "
        f"{len(idle.gzip_walls)} gzip scrapes each, 0.5 s apart; body {len(body) / 1e6:.1f} MB. CPU of the "
        "exporter's threads during the request (schedstat)."
    )
    table.notes.append(
        "Reference: the target families of the same body rebuilt as labelled prometheus_client metrics in the "
        f"benchmark process, rendered with generate_latest ({scale.reference_runs} runs, median); its extra samples "
        "are the _created series prometheus_client adds."
    )
    return table
