"""Benchmark 5: resident memory per target, and whether it stays flat.

Idle baseline: the exporter with no targets. Then 1,000 and 10,000 targets, a mix of
healthy ones (80%), ones failing at RCPT with a 550 (10%) and ones greeted with 554 (10%),
so failing results with their transcripts are held too. RSS (VmRSS of /proc/PID/status) is
sampled after each of several rounds (a round = one interval: every target probed once more);
per-target memory is (RSS after the last round - idle RSS) / targets, and flatness is the
growth from the second round's sample to the last (the first round allocates the series).
blackbox_exporter keeps no per-target state (it has no scheduled mode), so there is no
reference column: the target is absolute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Processes, rss_bytes
from benchmarks.report import BASELINE_LIMIT, NONE, Table, kib, mib, verdict
from benchmarks.systems import Sink, exporter_config, start_exporter, start_sink, wait_targets_probed

TARGET_PER_TARGET = 8 * 1024
TARGET_GROWTH = 0.02  # "flat": at most 2% growth from the second round to the last


@dataclass(frozen=True)
class Size:
    targets: int
    interval: float


@dataclass(frozen=True)
class Scale:
    sizes: tuple[Size, ...]
    rounds: int


DEFAULT = Scale(sizes=(Size(1000, 2.0), Size(10_000, 8.0)), rounds=5)
QUICK = Scale(sizes=(Size(100, 0.5), Size(400, 0.5)), rounds=2)


def _targets(sink: Sink, count: int) -> list[str]:
    failing = count // 10
    return (
        sink.targets("ok")[: count - 2 * failing]
        + sink.targets("reject_rcpt")[:failing]
        + sink.targets("reject_banner")[:failing]
    )


def run(quick: bool, tree: Path) -> Table:
    scale = QUICK if quick else DEFAULT
    table = Table(5, "Memory per target", ("smtp-exporter", "(no reference)"))
    largest = max(size.targets for size in scale.sizes)
    samples: dict[int, list[int]] = {}
    with Processes() as procs:
        sink = start_sink(procs, ok=largest, reject_rcpt=largest // 10, reject_banner=largest // 10)
        idle = start_exporter(
            procs, exporter_config([], interval=60.0, timeout=5.0), name="smtp-exporter-idle", tree=tree
        )
        time.sleep(2.0)
        idle_rss = rss_bytes(idle.pid)
        procs.stop(idle.process)
        for size in scale.sizes:
            targets = _targets(sink, size.targets)
            config = exporter_config(targets, interval=size.interval, timeout=min(5.0, size.interval * 0.9))
            exporter = start_exporter(procs, config, name=f"smtp-exporter-{size.targets}", tree=tree)
            wait_targets_probed(exporter, len(targets), timeout=size.interval * 3 + 60)
            rss = []
            for _ in range(scale.rounds):
                time.sleep(size.interval)
                rss.append(rss_bytes(exporter.pid))
            samples[size.targets] = rss
            procs.stop(exporter.process)

    table.add("idle RSS (no targets)", mib(idle_rss))
    for size in scale.sizes:
        rss = samples[size.targets]
        per_target = (rss[-1] - idle_rss) / size.targets
        table.add(
            f"{size.targets:,} targets: RSS after the last round",
            mib(rss[-1]),
        )
        table.add(
            f"{size.targets:,} targets: per target above idle",
            kib(per_target),
            NONE,
            NONE,
            f"<= {kib(TARGET_PER_TARGET)}",
            verdict(per_target <= TARGET_PER_TARGET),
            baseline_limit=BASELINE_LIMIT,
        )
        base = rss[1] if len(rss) > 1 else rss[0]
        growth = (rss[-1] - base) / base
        table.add(
            f"{size.targets:,} targets: RSS per round (MiB)",
            " → ".join(f"{value / 1048576:.1f}" for value in rss),
            NONE,
            NONE,
            f"growth <= {TARGET_GROWTH:.0%} after round 2",
            verdict(growth <= TARGET_GROWTH) + f" ({growth:+.1%})",
        )
    table.notes.append(
        "Targets: 80% healthy, 10% failing at RCPT (550), 10% greeted with 554; module smtp_full; "
        + ", ".join(f"{s.targets:,} targets every {s.interval:g}s" for s in scale.sizes)
        + f"; {scale.rounds} rounds after every target had a result."
    )
    return table
