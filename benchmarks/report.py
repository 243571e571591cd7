"""Result tables: one per benchmark, two systems side by side, their ratio, the target and a verdict.

A table renders as GitHub Markdown, so a run's output pastes into RESULTS.md as it is:

    ## 1. Scheduled-mode CPU per probe
    | Measure | smtp-exporter | blackbox_exporter | Ratio | Target | Result |
    |---|---|---|---|---|---|
    | CPU per probe | 95 µs | 580 µs | 0.16 | <= 0.20 | PASS |

`Result` is PASS or MISS for rows with a target, `-` for context rows.

With `--baseline PATH` (benchmarks/compare.py) a table also carries, for every row, the same
measure from the baseline checkout, the ratio this tree / baseline, and for the rows that have
one, the limit of that ratio (`Row.baseline_limit`) with its verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

# With --baseline: CPU per probe, scrape time and memory per target may grow by at most 10%
# against the baseline checkout (the limit a change must hold to cost users nothing measurable).
BASELINE_LIMIT = 1.10

PASS = "PASS"
MISS = "MISS"
NONE = "-"


@dataclass(frozen=True, slots=True)
class Row:
    measure: str
    ours: str
    other: str = NONE
    ratio: str = NONE
    target: str = NONE
    result: str = NONE
    baseline_limit: float | None = None  # the largest this-tree / baseline ratio allowed


@dataclass(frozen=True, slots=True)
class Compared:
    """A row's figures from the baseline checkout, against this tree's."""

    value: str  # the baseline's figure(s)
    ratio: str  # this tree / baseline
    limit: str  # e.g. "<= 1.10: PASS", or "-"


@dataclass
class Table:
    number: int
    title: str
    columns: tuple[str, str]  # the names of the two systems compared
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: list[Compared] | None = None  # one per row, with --baseline

    def add(
        self,
        measure: str,
        ours: str,
        other: str = NONE,
        ratio: str = NONE,
        target: str = NONE,
        result: str = NONE,
        *,
        baseline_limit: float | None = None,
    ) -> None:
        self.rows.append(Row(measure, ours, other, ratio, target, result, baseline_limit))

    @property
    def misses(self) -> list[str]:
        """The measures that missed a target (the benchmark's own, or the limit against the baseline)."""
        found = [row.measure for row in self.rows if row.result.startswith(MISS)]
        for row, compared in zip(self.rows, self.baseline or (), strict=False):
            if compared.limit.endswith(MISS):
                found.append(f"{row.measure} (against the baseline)")
        return found

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        first, second = self.columns
        if self.baseline is None:
            header = ["Measure", first, second, "Ratio", "Target", "Result"]
        else:
            header = ["Measure", f"{first}, this tree", "baseline", "this / baseline", "Limit"]
            header += [second, "Ratio", "Target", "Result"]
        lines = [
            f"## {self.number}. {self.title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for i, row in enumerate(self.rows):
            cells = [row.measure, row.ours]
            if self.baseline is not None:
                compared = self.baseline[i]
                cells += [compared.value, compared.ratio, compared.limit]
            cells += [row.other, row.ratio, row.target, row.result]
            lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        rows: list[dict[str, str]] = []
        for i, r in enumerate(self.rows):
            row = {
                "measure": r.measure,
                "ours": r.ours,
                "other": r.other,
                "ratio": r.ratio,
                "target": r.target,
                "result": r.result,
            }
            if self.baseline is not None:
                compared = self.baseline[i]
                row |= {"baseline": compared.value, "baseline_ratio": compared.ratio}
                row["baseline_limit"] = compared.limit
            rows.append(row)
        return {
            "number": self.number,
            "title": self.title,
            "columns": list(self.columns),
            "rows": rows,
            "notes": self.notes,
        }


def verdict(ok: bool) -> str:
    return PASS if ok else MISS


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1e3:,.{digits}f} ms"


def ratio(a: float, b: float, digits: int = 2) -> str:
    if b == 0:
        return "n/a"
    return f"{a / b:.{digits}f}"


def kib(nbytes: float) -> str:
    return f"{nbytes / 1024:,.1f} KiB"


def mib(nbytes: float) -> str:
    return f"{nbytes / 1048576:,.1f} MiB"


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0
