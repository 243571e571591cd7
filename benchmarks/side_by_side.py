"""CPU per scheduled probe of this tree and a baseline checkout, both probing at the same time.

    python -m benchmarks.side_by_side --baseline ../main [--targets 1000] [--windows 6]

Benchmark 1 with `--baseline` runs the trees one after the other; on a shared VM the machine
itself drifts by ±10-15% between runs minutes apart, more than the +10% budget it checks. Here
both exporters run at once, each probing the same targets of one sink (distinct ports, the
conversation of benchmark 1) every 2 s, and their CPU is read over the same windows: whatever
the machine does in a window, it does to both. The ratio of one window is this tree's CPU per
probe over the baseline's; the figure is their median. What each tree costs alone at a higher
rate is benchmark 1's to say: running both at once makes them share the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.compare import Tree
from benchmarks.harness import Processes, cpu_seconds
from benchmarks.run import missing_requirements
from benchmarks.systems import (
    REPO_ROOT,
    Exporter,
    exporter_config,
    metric_sum,
    start_exporter,
    start_sink,
    wait_targets_probed,
)

INTERVAL = 2.0
SETTLE = 4.0  # after every target's first probe, before the first window


def _probes(exporter: Exporter) -> float:
    return metric_sum(exporter.scrape(), "smtp_probes_total")


def measure(
    ours: Path, baseline: Path, *, targets: int, windows: int, window: float
) -> list[tuple[float, float]]:
    """Per window, (this tree's, the baseline's) CPU seconds per probe."""
    figures = []
    with Processes() as procs:
        sink = start_sink(procs, ok=targets)
        config = exporter_config(sink.targets(), interval=INTERVAL, timeout=INTERVAL * 0.9)
        pair = (
            start_exporter(procs, config, tree=ours, name="this-tree"),
            start_exporter(procs, config, tree=baseline, name="baseline"),
        )
        for exporter in pair:
            wait_targets_probed(exporter, targets, timeout=INTERVAL * 3 + 30)
        time.sleep(SETTLE)
        for _ in range(windows):
            before = [(_probes(e), cpu_seconds(e.pid)) for e in pair]
            time.sleep(window)
            after = [(_probes(e), cpu_seconds(e.pid)) for e in pair]
            per_probe = [
                (cpu1 - cpu0) / (probes1 - probes0) if probes1 > probes0 else float("inf")
                for (probes0, cpu0), (probes1, cpu1) in zip(before, after, strict=True)
            ]
            figures.append((per_probe[0], per_probe[1]))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.side_by_side", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--baseline", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--targets", type=int, default=1000, help="targets each tree probes (default 1000)")
    parser.add_argument("--windows", type=int, default=6, help="measurement windows (default 6)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window (default 20)")
    args = parser.parse_args(argv)
    trees = [Tree("this tree", REPO_ROOT), Tree("baseline", args.baseline.resolve())]
    problems = missing_requirements([], trees)  # the checks of `python -m benchmarks`
    if problems:
        print("benchmarks.side_by_side: cannot run:", *problems, sep="\n  - ", file=sys.stderr)
        raise SystemExit(2)
    ours, baseline = (tree.path for tree in trees)
    figures = measure(ours, baseline, targets=args.targets, windows=args.windows, window=args.window)
    print("| window | this tree, CPU per probe | baseline | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for index, (mine, theirs) in enumerate(figures, 1):
        ratios.append(mine / theirs)
        print(f"| {index} | {mine * 1e6:,.0f} µs | {theirs * 1e6:,.0f} µs | {mine / theirs:.3f} |")
    print(
        f"\nratio, median of {len(ratios)} windows: {statistics.median(ratios):.3f}"
        f" (range {min(ratios):.3f}-{max(ratios):.3f}); {args.targets:,} targets each, every {INTERVAL:g}s"
    )


if __name__ == "__main__":
    main()
