"""Benchmark 1: scheduled-mode CPU per probe, against blackbox_exporter's /probe at the same rate.

N targets (distinct ports of the multi-port sink, which answers like smtp-sink) with a short
interval. smtp-exporter: CPU seconds of its process (/proc/PID/stat) over a fixed window
divided by the probes completed in it (smtp_probes_total summed over targets). Then
blackbox_exporter, which has no scheduled mode: the load generator sends /probe requests for
the same targets at the rate smtp-exporter probed at; CPU of its process divided by requests.
The two run one after the other, never at once.

Between them, the floor: the same conversation on a bare loop (benchmarks/bare.py) at the same
rate, which only checks reply codes. Its CPU per conversation is the least any exporter on this
loop could spend; what smtp-exporter spends above it is the cost of what it measures and keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Processes, cpu_seconds
from benchmarks.report import BASELINE_LIMIT, NONE, Table, median, ms, percentile, ratio, us, verdict
from benchmarks.systems import (
    exporter_config,
    label_value,
    metric_sum,
    probe_once,
    run_bare,
    run_loadgen,
    samples,
    start_blackbox,
    start_exporter,
    start_sink,
    wait_targets_probed,
)

TARGET_RATIO = 0.2  # ours <= 1/5 of blackbox_exporter's CPU per probe
# Cheap probes must not cost honest timings: benchmark 4's fidelity target, applied to the whole
# reported duration of phases whose server answers at once (an upper bound of the error).
FIDELITY_MEDIAN = 0.0005
FIDELITY_P99 = 0.003


@dataclass(frozen=True)
class Scale:
    targets: int
    interval: float
    window: float


DEFAULT = Scale(targets=2000, interval=2.0, window=20.0)
QUICK = Scale(targets=100, interval=0.5, window=1.5)


def run(quick: bool, tree: Path) -> Table:
    scale = QUICK if quick else DEFAULT
    table = Table(
        1, "Scheduled-mode CPU per probe", ("smtp-exporter (scheduled)", "blackbox_exporter (/probe)")
    )
    with Processes() as procs:
        sink = start_sink(procs, ok=scale.targets)
        targets = sink.targets()
        config = exporter_config(targets, interval=scale.interval, timeout=scale.interval * 0.9)
        exporter = start_exporter(procs, config, tree=tree)
        wait_targets_probed(exporter, len(targets), timeout=scale.interval * 3 + 30)
        time.sleep(scale.interval)  # a full round in steady state before measuring
        body = exporter.scrape()
        probes0, failures0 = (
            metric_sum(body, "smtp_probes_total"),
            metric_sum(body, "smtp_probe_failures_total"),
        )
        cpu0, t0 = cpu_seconds(exporter.pid), time.monotonic()
        time.sleep(scale.window)
        cpu1, t1 = cpu_seconds(exporter.pid), time.monotonic()
        body = exporter.scrape()
        probes = metric_sum(body, "smtp_probes_total") - probes0
        failures = metric_sum(body, "smtp_probe_failures_total") - failures0
        reported = _phase_durations(body, ("connect", "ehlo"))
        ours_cpu = cpu1 - cpu0
        rate = probes / (t1 - t0)
        procs.stop(exporter.process)

        bare = run_bare(procs, targets, rate=rate, seconds=scale.window)
        bare_done = int(bare["completed"]) + int(bare["failed"])  # type: ignore[call-overload]

        blackbox = start_blackbox(procs)
        probe_once(blackbox, targets[0])
        bb_cpu0 = cpu_seconds(blackbox.pid)
        load = run_loadgen(procs, blackbox, targets, rate=rate, seconds=scale.window, concurrency=512)
        bb_cpu = cpu_seconds(blackbox.pid) - bb_cpu0
        bb_requests = int(load["requests"])  # type: ignore[call-overload]
        bb_ok = int(load["probe_successes"])  # type: ignore[call-overload]
        bb_seconds = float(load["seconds"])  # type: ignore[arg-type]

    ours_per = ours_cpu / probes if probes else float("inf")
    bb_per = bb_cpu / bb_requests if bb_requests else float("inf")
    table.add(
        "CPU per probe",
        us(ours_per),
        us(bb_per),
        ratio(ours_per, bb_per),
        f"<= {TARGET_RATIO:.2f}",
        verdict(ours_per <= TARGET_RATIO * bb_per),
        baseline_limit=BASELINE_LIMIT,
    )
    bare_per = float(bare["cpu_seconds"]) / bare_done if bare_done else float("inf")  # type: ignore[arg-type]
    table.add(
        "the same conversation on a bare loop (the floor), CPU per conversation",
        us(bare_per),
        us(bb_per),
        ratio(bare_per, bb_per),
        NONE,
    )
    table.add("smtp-exporter above the floor", us(ours_per - bare_per), NONE, ratio(ours_per, bare_per), NONE)
    table.add("probes completed in the window", f"{probes:,.0f}", f"{bb_requests:,}")
    table.add("probe rate", f"{rate:,.0f}/s", f"{bb_requests / bb_seconds:,.0f}/s")
    table.add("failed probes", f"{failures:,.0f}", f"{bb_requests - bb_ok:,}")
    for phase, values in reported.items():
        mid, p99 = median(values), percentile(values, 99)
        table.add(
            f"{phase} phase as reported (instant server), median / p99",
            f"{ms(mid, 3)} / {ms(p99, 3)}",
            NONE,
            NONE,
            f"<= {ms(FIDELITY_MEDIAN, 1)} / {ms(FIDELITY_P99, 0)}",
            verdict(bool(values) and mid <= FIDELITY_MEDIAN and p99 <= FIDELITY_P99),
        )
    table.add(
        "CPU used (one core = 100%)",
        f"{100 * ours_cpu / (t1 - t0):.1f}%",
        f"{100 * bb_cpu / bb_seconds:.1f}%",
        NONE,
    )
    table.notes.append(
        f"{scale.targets:,} targets (distinct ports of benchmarks/sink.py, smtp-sink's replies), "
        f"interval {scale.interval:g}s, window {scale.window:g}s; conversation: connect, 220, EHLO, "
        "MAIL, RCPT, DATA, message, QUIT."
    )
    table.notes.append(
        "Phases as reported: each target's latest probe at the end of the window. The server answers at "
        "once, so what they show above a loopback round trip is time the reply waited for the "
        "exporter's loop: the cost in timing of starting probes in batches (smtp_exporter/scheduler.py). "
        "Judged against benchmark 4's fidelity target, counting the whole duration as error."
    )
    table.notes.append(
        f"The floor: benchmarks/bare.py at the same rate ({bare_done:,} conversations, "
        f"{bare['failed']} failed), the conversation with reply codes checked and nothing else: no "
        "timing, no kept result, no metrics. Ratio in its second row: smtp-exporter's CPU per probe "
        "over the floor's."
    )
    table.notes.append(
        "blackbox_exporter driven by benchmarks/loadgen.py at smtp-exporter's measured probe rate; its "
        "CPU includes serving the /probe HTTP request, which is how it is always used."
    )
    return table


def _phase_durations(body: bytes, phases: tuple[str, ...]) -> dict[str, list[float]]:
    """The reported smtp_probe_phase_duration_seconds of every target, by phase."""
    found: dict[str, list[float]] = {phase: [] for phase in phases}
    for labels, value in samples(body, "smtp_probe_phase_duration_seconds"):
        phase = label_value(labels, "phase")
        if phase in found:
            found[phase].append(value)
    return found
