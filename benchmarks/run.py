"""The benchmark suite's entry point: `python -m benchmarks [--quick] [--only 1,3] [--baseline PATH]`.

Checks first that everything the selected benchmarks need is installed, and says what is
missing (it installs nothing). Runs each benchmark in turn, every process it starts on
127.0.0.1 and stopped when it ends, and prints one Markdown table per benchmark. Exit status:
0 when every selected benchmark ran (whatever its PASS/MISS), 1 when one failed to run,
2 when something it needs is missing or the arguments are wrong.

`--baseline PATH` runs every selected benchmark for this tree and for the checkout at PATH too
(`--rounds N` times each, alternating), and reports both side by side (benchmarks/compare.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import bench_cpu, bench_fidelity, bench_memory, bench_scrape, bench_shards, bench_throughput
from benchmarks.compare import Tree, merge, order
from benchmarks.harness import BenchmarkError, find_binary, sigterm_as_interrupt
from benchmarks.report import Table
from benchmarks.systems import BLACKBOX, REPO_ROOT, imported_from


@dataclass(frozen=True)
class Benchmark:
    number: int
    name: str
    run: Callable[[bool, Path], Table]  # (quick, the tree whose smtp_exporter runs)
    binaries: tuple[str, ...]  # system binaries it needs


BENCHMARKS = (
    Benchmark(1, "cpu", bench_cpu.run, (BLACKBOX,)),
    Benchmark(2, "throughput", bench_throughput.run, ("smtp-sink", BLACKBOX, "wrk")),
    Benchmark(3, "scrape", bench_scrape.run, ()),
    Benchmark(4, "fidelity", bench_fidelity.run, (BLACKBOX,)),
    Benchmark(5, "memory", bench_memory.run, ()),
    Benchmark(6, "shards", bench_shards.run, ()),
)
DEBIAN_PACKAGES = {"smtp-sink": "postfix", BLACKBOX: "prometheus-blackbox-exporter", "wrk": "wrk"}
PYTHON_MODULES = {
    "aiohttp": "aiohttp",
    "prometheus_client": "prometheus_client",
    "yaml": "PyYAML",
    "dns": "dnspython",
}


def select(only: str | None) -> list[Benchmark]:
    if not only:
        return list(BENCHMARKS)
    chosen = []
    for word in only.split(","):
        word = word.strip()
        match = [b for b in BENCHMARKS if word in (str(b.number), b.name)]
        if not match:
            names = ", ".join(f"{b.number}/{b.name}" for b in BENCHMARKS)
            raise SystemExit(f"benchmarks: unknown benchmark {word!r} (choose from {names})")
        chosen += [b for b in match if b not in chosen]
    return sorted(chosen, key=lambda b: b.number)


def missing_requirements(benchmarks: list[Benchmark], trees: list[Tree]) -> list[str]:
    problems = []
    if not Path("/proc/self/stat").exists():
        problems.append("Linux /proc (CPU, memory and ports are read from it)")
    for binary in sorted({name for b in benchmarks for name in b.binaries}):
        if find_binary(binary) is None:
            package = DEBIAN_PACKAGES[binary]
            problems.append(f"{binary}: install the Debian package {package} (apt-get install {package})")
    for module, distribution in PYTHON_MODULES.items():
        if importlib.util.find_spec(module) is None:
            problems.append(f"Python module {module}: pip install {distribution}")
    if importlib.util.find_spec("smtp_exporter") is None and not (REPO_ROOT / "smtp_exporter").is_dir():
        problems.append("smtp_exporter: run from a checkout of the repository, or pip install smtp-exporter")
    elif not problems:
        problems += _wrong_trees(trees)
    return problems


def _wrong_trees(trees: list[Tree]) -> list[str]:
    """Each tree's exporter must import that tree's smtp_exporter, not an installed copy."""
    problems = []
    for tree in trees:
        expected = (tree.path / "smtp_exporter").resolve()
        if not expected.is_dir():
            problems.append(f"{tree.label} {tree.path}: no smtp_exporter package there")
            continue
        try:
            found = imported_from(tree.path).resolve()
        except BenchmarkError as exc:
            problems.append(f"{tree.label}: {exc}")
            continue
        if found != expected:
            problems.append(f"{tree.label} {tree.path}: its exporter would import {found}, not {expected}")
    return problems


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine(trees: list[Tree]) -> list[str]:
    """The facts that make a run's figures comparable: cores, CPU, memory, versions, load."""
    model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        total_kib = int(handle.readline().split()[1])
    try:
        uvloop = importlib.import_module("uvloop").__version__
    except ImportError:
        uvloop = "not installed (the exporter runs on asyncio's own loop)"
    import smtp_exporter

    blackbox = find_binary(BLACKBOX)
    return [
        f"CPU: {os.cpu_count()} x {model}",
        f"RAM: {total_kib / 1048576:.1f} GiB",
        f"Kernel: {platform.release()}",
        f"Python {platform.python_version()}, uvloop {uvloop}, smtp-exporter {smtp_exporter.__version__}",
        f"blackbox_exporter: {_first_line([blackbox, '--version']) if blackbox else 'not installed'}",
        f"Load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ] + [f"smtp-exporter, {tree.label}: {tree.describe()}" for tree in trees]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, seconds in all (a smoke run, not a measurement)"
    )
    parser.add_argument(
        "--only",
        metavar="LIST",
        help="comma-separated benchmarks by number or name: "
        + ", ".join(f"{b.number}/{b.name}" for b in BENCHMARKS),
    )
    parser.add_argument("--output", metavar="FILE", help="also write the Markdown report to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the tables as JSON to FILE")
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        type=Path,
        help="also run each benchmark's smtp-exporter from the checkout at PATH, and compare",
    )
    parser.add_argument(
        "--rounds",
        metavar="N",
        type=int,
        default=1,
        help="run each benchmark N times per tree, alternating trees (default 1)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sys.path.insert(0, str(REPO_ROOT))
    benchmarks = select(args.only)
    trees = [Tree("this tree", REPO_ROOT)]
    if args.baseline is not None:
        trees.append(Tree("baseline", args.baseline.resolve()))
    problems = missing_requirements(benchmarks, trees)
    if problems:
        print("benchmarks: missing requirements (nothing is installed automatically):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2)

    header = [
        "# smtp-exporter benchmarks" + (" (--quick: smoke run, not a measurement)" if args.quick else ""),
        "",
    ]
    header += [f"- {fact}" for fact in machine(trees)]
    print("\n".join(header) + "\n", flush=True)
    tables: list[Table] = []
    failed = []
    started = time.monotonic()
    with sigterm_as_interrupt():
        for index, benchmark in enumerate(benchmarks):
            t0 = time.monotonic()
            try:
                table = _run_rounds(benchmark, index, trees, args.quick, args.rounds)
            except KeyboardInterrupt:
                print(
                    f"\ninterrupted during benchmark {benchmark.number} ({benchmark.name})", file=sys.stderr
                )
                raise SystemExit(130) from None
            except BenchmarkError as exc:
                failed.append(benchmark)
                print(f"## {benchmark.number}. {benchmark.name}: FAILED TO RUN\n\n{exc}\n", flush=True)
                continue
            except Exception:
                failed.append(benchmark)
                print(
                    f"## {benchmark.number}. {benchmark.name}: FAILED TO RUN\n\n```\n{traceback.format_exc()}```\n"
                )
                continue
            table.notes.append(f"Benchmark time: {time.monotonic() - t0:.0f}s.")
            tables.append(table)
            print(table.markdown(), flush=True)
    misses = sum(len(t.misses) for t in tables)
    summary = f"{len(tables)} benchmarks ran in {time.monotonic() - started:.0f}s; {misses} targets missed"
    if failed:
        summary += "; failed to run: " + ", ".join(f"{b.number} ({b.name})" for b in failed)
    print(summary)
    if args.output:
        Path(args.output).write_text(
            "\n".join(header) + "\n\n" + "\n".join(t.markdown() for t in tables) + "\n" + summary + "\n"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": header[2:], "tables": [t.to_json() for t in tables]}, indent=1)
        )
    raise SystemExit(1 if failed else 0)


def _run_rounds(benchmark: Benchmark, index: int, trees: list[Tree], quick: bool, rounds: int) -> Table:
    """The benchmark run `rounds` times for each tree, alternating, merged into one table."""
    if len(trees) == 1 and rounds == 1:
        return benchmark.run(quick, trees[0].path)
    runs: dict[str, list[Table]] = {tree.label: [] for tree in trees}
    for round_ in range(rounds):
        for tree in order(index, round_, trees):
            t0 = time.monotonic()
            runs[tree.label].append(benchmark.run(quick, tree.path))
            print(
                f"benchmark {benchmark.number} ({benchmark.name}), {tree.label}, round {round_ + 1}: "
                f"{time.monotonic() - t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    return merge(runs[trees[0].label], runs.get("baseline", []))
