"""A fast smoke run of the benchmark suite (`python -m benchmarks --quick`, and with
`--baseline` against a second checkout), so it does not rot.

It checks that every benchmark runs end to end against the real peers (smtp-sink,
blackbox_exporter, wrk) and prints a well-formed table, and that no process it started
outlives it, even when it is stopped mid-run. It never looks at the figures: timings on a
shared machine prove nothing, and --quick sizes are not measurements anyway.

Processes are recognised by an environment variable set only for this run: every process
the suite starts inherits it (Python, Go and Postfix binaries alike), so leftovers are found
in /proc/*/environ without confusing them with anyone else's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import require_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "SMTP_EXPORTER_BENCH_SMOKE"
RESULTS = {"PASS", "MISS", "-", "n/a"}
COLUMNS = 6


def _env(marker: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **extra)
    env[MARKER] = marker
    return env


def _marked_processes(marker: str) -> list[str]:
    """Command lines of the live processes whose environment carries `marker`."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {command}")
        except OSError:
            continue
    return found


def _wait_gone(marker: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = _marked_processes(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _run_to_completion(argv: list[str], module: str = "benchmarks") -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGV`, which must exit 0 and leave no process of its own behind."""
    marker = uuid.uuid4().hex
    completed = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=REPO_ROOT,
        env=_env(marker),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert _wait_gone(marker) == [], "processes left behind by the benchmark run"
    return completed


def _require_peers() -> None:
    for binary in ("smtp-sink", "prometheus-blackbox-exporter", "wrk"):
        require_binary(binary)


def test_quick_run_prints_a_well_formed_table_per_benchmark(tmp_path: Path) -> None:
    _require_peers()
    report = tmp_path / "report.json"
    markdown = tmp_path / "report.md"
    completed = _run_to_completion(["--quick", f"--json={report}", f"--output={markdown}"])

    data = json.loads(report.read_text())
    assert any(line.startswith("- CPU: ") for line in data["machine"])
    tables = data["tables"]
    assert [t["number"] for t in tables] == [1, 2, 3, 4, 5, 6]
    for table in tables:
        assert table["title"] and len(table["columns"]) == 2
        assert table["rows"], table
        judged = [row for row in table["rows"] if row["target"] != "-"]
        assert judged, f"benchmark {table['number']} has no row with a target"
        for row in table["rows"]:
            assert row["measure"] and row["ours"], row
            assert row["result"].split(" ")[0] in RESULTS, row
        for row in judged:
            assert row["result"].split(" ")[0] in {"PASS", "MISS", "n/a"}, row

    # The Markdown (stdout and --output) has the same tables, each row with all its cells.
    for text in (completed.stdout, markdown.read_text()):
        for table in tables:
            assert f"## {table['number']}. {table['title']}" in text
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        assert len(rows) == sum(len(t["rows"]) + 1 for t in tables)  # + the header of each table
        for line in rows:
            cells = line.strip("|").split(" | ")
            assert len(cells) == COLUMNS, line
    assert "6 benchmarks ran" in completed.stdout


def test_quick_run_against_a_baseline_checkout_shows_both_trees(tmp_path: Path) -> None:
    """`--baseline PATH`: the exporter runs from each tree in turn, and each row carries both
    figures. The baseline is a copy of this tree's package, so it really is imported from there
    (the suite refuses to run when it would not be)."""
    _require_peers()
    baseline = tmp_path / "baseline"
    shutil.copytree(
        REPO_ROOT / "smtp_exporter", baseline / "smtp_exporter", ignore=shutil.ignore_patterns("__pycache__")
    )
    report = tmp_path / "report.json"
    completed = _run_to_completion(
        ["--quick", "--only=cpu,memory", f"--baseline={baseline}", f"--json={report}"]
    )
    for benchmark in ("1 (cpu)", "5 (memory)"):
        for tree in ("this tree", "baseline"):
            assert f"benchmark {benchmark}, {tree}, round 1" in completed.stderr

    data = json.loads(report.read_text())
    assert f"- smtp-exporter, baseline: {baseline}" in data["machine"]
    tables = data["tables"]
    assert [t["number"] for t in tables] == [1, 5]
    limited = []
    for table in tables:
        for row in table["rows"]:
            assert row["ours"] and row["baseline"], row
            if row["baseline_limit"] != "-":
                limited.append(row)
                assert row["baseline_limit"].rsplit(": ", 1)[1] in {"PASS", "MISS"}, row
    assert {row["measure"] for row in limited} >= {"CPU per probe"}
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == sum(len(t["rows"]) + 1 for t in tables)
    for line in rows:
        assert len(line.strip("|").split(" | ")) == COLUMNS + 3, line  # + baseline, ratio, limit


def test_side_by_side_runs_both_trees_at_once_and_prints_each_window(tmp_path: Path) -> None:
    """`python -m benchmarks.side_by_side`: both exporters probe at the same time; each window is
    a row with both trees' CPU per probe and their ratio, then the median."""
    baseline = tmp_path / "baseline"
    shutil.copytree(
        REPO_ROOT / "smtp_exporter", baseline / "smtp_exporter", ignore=shutil.ignore_patterns("__pycache__")
    )
    completed = _run_to_completion(
        [f"--baseline={baseline}", "--targets=20", "--windows=2", "--window=2"],
        module="benchmarks.side_by_side",
    )
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ") and "µs" in line]
    assert len(rows) == 2, completed.stdout
    for line in rows:
        _window, mine, theirs, ratio = line.strip("| ").split(" | ")
        assert mine.endswith(" µs") and theirs.endswith(" µs") and float(ratio) > 0, line
    assert "ratio, median of 2 windows: " in completed.stdout


def test_side_by_side_refuses_a_baseline_without_the_package(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.side_by_side", f"--baseline={tmp_path}"],
        cwd=REPO_ROOT,
        env=_env(uuid.uuid4().hex),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        completed.returncode == 2
        and f"baseline {tmp_path}: no smtp_exporter package there" in completed.stderr
    )


def test_a_baseline_without_the_package_is_refused(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only=memory", f"--baseline={tmp_path}"],
        cwd=REPO_ROOT,
        env=_env(uuid.uuid4().hex),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert f"baseline {tmp_path}: no smtp_exporter package there" in completed.stderr
    assert completed.stdout == ""


def test_stopped_mid_run_it_leaves_no_process_behind() -> None:
    _require_peers()
    marker = uuid.uuid4().hex
    runner = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--only=cpu"],
        cwd=REPO_ROOT,
        env=_env(marker),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until it has started its own processes (the sink, then the exporter).
        deadline = time.monotonic() + 60
        while len(_marked_processes(marker)) < 3 and runner.poll() is None:
            assert time.monotonic() < deadline, "the benchmark never started its processes"
            time.sleep(0.05)
        assert runner.poll() is None, runner.stderr.read() if runner.stderr else ""
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 130, stderr
    assert "interrupted during benchmark 1" in stderr
    assert _wait_gone(marker) == [], "processes left behind after SIGTERM"


def test_missing_requirements_are_named_and_nothing_runs(tmp_path: Path) -> None:
    # With an empty PATH, blackbox_exporter (in /usr/bin) cannot be found.
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only=throughput"],
        cwd=REPO_ROOT,
        env=_env(uuid.uuid4().hex, PATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "missing requirements" in completed.stderr
    assert "apt-get install prometheus-blackbox-exporter" in completed.stderr
    assert "apt-get install wrk" in completed.stderr
    assert completed.stdout == ""


@pytest.mark.parametrize("argument", ["--only=nonsense", "--only=7"])
def test_unknown_benchmark_is_a_usage_error(argument: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", argument],
        cwd=REPO_ROOT,
        env=_env(uuid.uuid4().hex),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode != 0
    assert "unknown benchmark" in completed.stderr
    assert "1/cpu" in completed.stderr
