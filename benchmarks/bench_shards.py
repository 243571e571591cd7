"""Benchmark 6: scale-out with --shard.count K.

The same config (N targets on the multi-port sink) is run by K processes started with
`--shard.count K --shard.index i`. Per-process CPU (share of one core over a window, from
/proc/PID/stat) should fall as 1/K of the single process'; and the union of the `target`
labels of smtp_probes_total across the K processes' /metrics must be exactly the config's
targets, with no target in two shards. K=1 is the reference.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import BenchmarkError, Processes, cpu_seconds
from benchmarks.report import NONE, Table, ratio, verdict
from benchmarks.systems import (
    Exporter,
    exporter_config,
    label_value,
    metric_value,
    samples,
    start_exporter,
    start_sink,
)

TARGET_EXCESS = 1.25  # per-process CPU at most 25% above the ideal 1/K of K=1's


@dataclass(frozen=True)
class Scale:
    targets: int
    interval: float
    window: float
    shard_counts: tuple[int, ...]


DEFAULT = Scale(targets=2000, interval=2.0, window=15.0, shard_counts=(1, 2, 4))
QUICK = Scale(targets=100, interval=0.5, window=1.0, shard_counts=(1, 2))


@dataclass
class ShardRun:
    cpu_shares: list[float]  # per process, share of one core
    probes: list[float]  # per process, probes completed in the window
    targets_seen: Counter[str]


def _wait_shards(shards: list[Exporter], total: int, timeout: float) -> None:
    """Until every shard has a result for each of its targets, and the shards have `total` in all."""
    deadline = time.monotonic() + timeout
    while True:
        done = 0
        complete = True
        for shard in shards:
            body = shard.scrape()
            have = sum(1 for _ in samples(body, "smtp_probes_total"))
            done += have
            complete = complete and have >= metric_value(body, "smtp_exporter_targets")
        if complete and done >= total:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(f"shards probed {done} of {total} targets in {timeout:.0f}s")
        time.sleep(0.5)


def _run_k(procs: Processes, config: str, k: int, scale: Scale, tree: Path) -> ShardRun:
    shards = [
        start_exporter(
            procs,
            config,
            name=f"smtp-exporter-shard{i}of{k}",
            extra_args=(f"--shard.count={k}", f"--shard.index={i}"),
            tree=tree,
        )
        for i in range(k)
    ]
    try:
        _wait_shards(shards, scale.targets, scale.interval * 3 + 30)
        time.sleep(scale.interval)
        before = [metric_sum_probes(s) for s in shards]
        cpu0, t0 = [cpu_seconds(s.pid) for s in shards], time.monotonic()
        time.sleep(scale.window)
        cpu1, t1 = [cpu_seconds(s.pid) for s in shards], time.monotonic()
        seen: Counter[str] = Counter()
        probes = []
        for shard, start in zip(shards, before, strict=True):
            body = shard.scrape()
            probes.append(sum(v for _, v in samples(body, "smtp_probes_total")) - start)
            for labels, _ in samples(body, "smtp_probes_total"):
                target = label_value(labels, "target")
                if target is not None:
                    seen[target] += 1
        return ShardRun([(b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)], probes, seen)
    finally:
        for shard in shards:
            procs.stop(shard.process)


def metric_sum_probes(exporter: Exporter) -> float:
    return sum(v for _, v in samples(exporter.scrape(), "smtp_probes_total"))


def run(quick: bool, tree: Path) -> Table:
    scale = QUICK if quick else DEFAULT
    table = Table(6, "Scale-out with --shard.count K", ("measured", "ideal (K=1 / K)"))
    runs: dict[int, ShardRun] = {}
    with Processes() as procs:
        sink = start_sink(procs, ok=scale.targets)
        targets = sink.targets()
        config = exporter_config(targets, interval=scale.interval, timeout=scale.interval * 0.9)
        for k in scale.shard_counts:
            runs[k] = _run_k(procs, config, k, scale, tree)

    single = runs[scale.shard_counts[0]].cpu_shares[0]
    expected = set(targets)
    for k in scale.shard_counts:
        result = runs[k]
        mean = sum(result.cpu_shares) / k
        worst = max(result.cpu_shares)
        ideal = single / k
        table.add(
            f"K={k}: CPU per process, mean (max)",
            f"{100 * mean:.1f}% ({100 * worst:.1f}%)",
            f"{100 * ideal:.1f}%",
            ratio(mean, ideal),
            f"<= {TARGET_EXCESS:.2f}" if k > 1 else NONE,
            verdict(mean <= TARGET_EXCESS * ideal) if k > 1 else NONE,
        )
        table.add(
            f"K={k}: probes per process in the window",
            ", ".join(f"{p:,.0f}" for p in result.probes),
        )
        seen = set(result.targets_seen)
        duplicates = sum(1 for count in result.targets_seen.values() if count > 1)
        missing = len(expected - seen)
        extra = len(seen - expected)
        table.add(
            f"K={k}: targets probed by exactly one shard",
            f"{len(seen) - duplicates:,} of {len(expected):,} (missing {missing}, in two shards {duplicates}, unknown {extra})",
            NONE,
            NONE,
            "all, once",
            verdict(seen == expected and duplicates == 0),
        )
    table.notes.append(
        f"{scale.targets:,} targets, interval {scale.interval:g}s, window {scale.window:g}s; the K processes run at "
        "once on the same machine (its cores are shared, so this shows the split of work, not a speed-up)."
    )
    return table
