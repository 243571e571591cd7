"""Benchmark 2: /probe throughput at 32 concurrent connections, against blackbox_exporter.

Both exporters probe one Postfix smtp-sink with the same conversation, driven by wrk (closed
loop: 32 connections, each sending its next request when the previous answer arrived). Requests
per second from wrk, CPU per request from the exporter's /proc/PID/stat over the run. One
exporter at a time; the sink, wrk and the exporter share the machine's cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from benchmarks.harness import Processes, cpu_seconds
from benchmarks.report import Table, ratio, us, verdict
from benchmarks.systems import (
    MODULE,
    Exporter,
    WrkResult,
    exporter_config,
    probe_once,
    run_wrk,
    start_blackbox,
    start_exporter,
    start_smtp_sink,
)

CONNECTIONS = 32
TARGET_RATIO = 2.0  # ours >= 2x blackbox_exporter's requests/s


@dataclass(frozen=True)
class Scale:
    seconds: float
    threads: int


DEFAULT = Scale(seconds=10.0, threads=2)
QUICK = Scale(seconds=1.0, threads=1)


def _load(procs: Processes, exporter: Exporter, target: str, scale: Scale) -> tuple[WrkResult, float]:
    probe_once(exporter, target)
    url = f"{exporter.base}/probe?{urlencode({'target': target, 'module': MODULE})}"
    cpu0 = cpu_seconds(exporter.pid)
    result = run_wrk(procs, url, connections=CONNECTIONS, threads=scale.threads, seconds=scale.seconds)
    return result, cpu_seconds(exporter.pid) - cpu0


def run(quick: bool, tree: Path) -> Table:
    scale = QUICK if quick else DEFAULT
    table = Table(
        2, f"/probe throughput at {CONNECTIONS} connections", ("smtp-exporter", "blackbox_exporter")
    )
    with Processes() as procs:
        _sink, port = start_smtp_sink(procs)
        target = f"127.0.0.1:{port}"
        exporter = start_exporter(procs, exporter_config([], interval=60.0, timeout=5.0), tree=tree)
        ours, ours_cpu = _load(procs, exporter, target, scale)
        procs.stop(exporter.process)
        blackbox = start_blackbox(procs)
        theirs, bb_cpu = _load(procs, blackbox, target, scale)

    table.add(
        "requests/s",
        f"{ours.requests_per_second:,.0f}",
        f"{theirs.requests_per_second:,.0f}",
        ratio(ours.requests_per_second, theirs.requests_per_second),
        f">= {TARGET_RATIO:.1f}",
        verdict(ours.requests_per_second >= TARGET_RATIO * theirs.requests_per_second),
    )
    ours_per = ours_cpu / ours.requests if ours.requests else float("inf")
    bb_per = bb_cpu / theirs.requests if theirs.requests else float("inf")
    table.add("CPU per request", us(ours_per), us(bb_per), ratio(ours_per, bb_per))
    table.add("requests", f"{ours.requests:,}", f"{theirs.requests:,}")
    table.add(
        "non-2xx answers / socket errors",
        f"{ours.non_2xx} / {ours.socket_errors}",
        f"{theirs.non_2xx} / {theirs.socket_errors}",
    )
    table.add(
        "exporter CPU (one core = 100%)",
        f"{100 * ours_cpu / ours.seconds:.0f}%",
        f"{100 * bb_cpu / theirs.seconds:.0f}%",
    )
    table.notes.append(
        f"wrk -c{CONNECTIONS} -t{scale.threads} -d{max(1, round(scale.seconds))}s against "
        f"/probe?module={MODULE} of one Postfix smtp-sink (-m 1024); one probe checked to succeed on each "
        "exporter first."
    )
    return table
