"""How runs of one benchmark are merged (benchmarks/compare.py): rounds into ranges, this tree
against a baseline into ratios and verdicts. Pure functions over the tables the benchmarks
print; the end-to-end run against a real baseline checkout is in test_smoke.py."""

from __future__ import annotations

from pathlib import Path

from benchmarks.compare import Tree, merge, order, ratios, spread
from benchmarks.report import Table


def _table(cpu: str, floor: str, result: str = "PASS") -> Table:
    table = Table(1, "CPU", ("smtp-exporter", "blackbox_exporter"))
    table.add("CPU per probe", cpu, "1,300 µs", "0.30", "<= 0.20", result, baseline_limit=1.10)
    table.add("floor", floor, "1,300 µs")
    table.add("failed probes", "0", "0")
    return table


def test_one_round_is_shown_as_it_is_and_rounds_as_ranges() -> None:
    assert spread(["336 µs"]) == "336 µs"
    assert spread(["336 µs", "401 µs", "350 µs"]) == "336-401 µs"
    assert spread(["1,000 / 980, 0 failed", "1,000 / 1,002, 3 failed"]) == "1,000 / 980-1,002, 0-3 failed"
    assert spread(["PASS", "n/a"]) == "PASS; n/a"  # not the same shape: each as it is


def test_ratio_is_of_the_medians_and_only_between_like_figures() -> None:
    assert ratios(["330 µs", "400 µs", "360 µs"], ["300 µs"]) == [1.2]
    assert ratios(["0.4 ms / 2.6 ms"], ["0.5 ms / 2.0 ms"]) == [0.8, 1.3]
    assert ratios(["0"], ["0"]) is None  # nothing to divide by
    assert ratios(["330 µs"], ["0.3 ms"]) is None  # other units: not compared
    assert ratios(["1 → 2 → 3"], ["1 → 2 → 3"]) is None  # a series, not a figure


def test_trees_alternate_which_goes_first() -> None:
    trees = [Tree("this tree", Path("/a")), Tree("baseline", Path("/b"))]
    firsts = [order(index, round_, trees)[0].label for index in range(2) for round_ in range(2)]
    assert firsts == ["this tree", "baseline", "baseline", "this tree"]


def test_merged_table_puts_both_trees_side_by_side_with_the_limit() -> None:
    ours = [_table("330 µs", "140 µs"), _table("350 µs", "150 µs", "MISS")]
    slower = [_table("300 µs", "140 µs"), _table("310 µs", "140 µs")]
    merged = merge(ours, slower)
    cpu = merged.rows[0]
    assert (cpu.ours, cpu.result) == ("330-350 µs", "MISS in 1 of 2 rounds")
    assert merged.baseline is not None
    compared = merged.baseline[0]
    assert (compared.value, compared.ratio, compared.limit) == ("300-310 µs", "1.11", "<= 1.10: MISS")
    assert merged.baseline[1].limit == "-"  # a row without a limit against the baseline
    assert merged.baseline[2].ratio == "-"  # 0 failed probes on both: no ratio
    assert "CPU per probe (against the baseline)" in merged.misses

    header, _rule, *rows = [line for line in merged.markdown().splitlines() if line.startswith("|")]
    assert header.split(" | ")[1:5] == ["smtp-exporter, this tree", "baseline", "this / baseline", "Limit"]
    assert all(line.count(" | ") == 8 for line in [header, *rows])
    row = merged.to_json()["rows"][0]  # type: ignore[index]
    assert (row["baseline"], row["baseline_ratio"], row["baseline_limit"]) == (
        "300-310 µs",
        "1.11",
        "<= 1.10: MISS",
    )


def test_within_the_limit_passes() -> None:
    merged = merge([_table("320 µs", "140 µs")], [_table("300 µs", "140 µs")])
    assert merged.baseline is not None
    assert merged.baseline[0].limit == "<= 1.10: PASS"
    assert merged.misses == []
