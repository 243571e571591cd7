"""Result tables: one per benchmark, two systems side by side, their ratio, the target and a verdict.

A table renders as GitHub Markdown, so a run's output pastes into RESULTS.md as it is:

    ## 1. Scheduled-mode CPU per probe
    | Measure | smtp-exporter | blackbox_exporter | Ratio | Target | Result |
    |---|---|---|---|---|---|
    | CPU per probe | 95 µs | 580 µs | 0.16 | <= 0.20 | PASS |

`Result` is PASS or MISS for rows with a target, `-` for context rows.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

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


@dataclass
class Table:
    number: int
    title: str
    columns: tuple[str, str]  # the names of the two systems compared
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: str, **kwargs: str) -> None:
        self.rows.append(Row(*args, **kwargs))

    @property
    def misses(self) -> list[Row]:
        return [row for row in self.rows if row.result == MISS]

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [
            f"## {self.number}. {self.title}",
            "",
            f"| Measure | {self.columns[0]} | {self.columns[1]} | Ratio | Target | Result |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            cells = (row.measure, row.ours, row.other, row.ratio, row.target, row.result)
            lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        return {
            "number": self.number,
            "title": self.title,
            "columns": list(self.columns),
            "rows": [
                {
                    "measure": r.measure,
                    "ours": r.ours,
                    "other": r.other,
                    "ratio": r.ratio,
                    "target": r.target,
                    "result": r.result,
                }
                for r in self.rows
            ],
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
