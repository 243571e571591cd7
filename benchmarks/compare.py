"""Runs of one benchmark merged into one table: several rounds, and this tree against a baseline.

`python -m benchmarks --baseline PATH` runs each selected benchmark for this tree and for the
checkout at PATH (its exporter processes import PATH's smtp_exporter), `--rounds N` times each,
alternating which tree goes first so that a slow spell of the machine does not fall on one tree
only. The merged table keeps this tree's rows and adds, per row, the baseline's figures, the ratio
this tree / baseline (of the medians over rounds) and, for the rows that set `baseline_limit`,
that limit and its verdict. With several rounds a figure shows as its range over them, `336-401 µs`.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.report import MISS, NONE, Compared, Row, Table, verdict

# A figure as the tables print it: 1,234 or 0.41 or 12 (a sign, a unit or a % stays in the text).
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Tree:
    """A checkout whose smtp_exporter the exporter processes import."""

    label: str  # "this tree" or "baseline"
    path: Path

    def describe(self) -> str:
        """The path and, in a git checkout, its commit (and whether it has uncommitted changes)."""
        try:
            commit = subprocess.run(
                ["git", "-C", str(self.path), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except OSError:
            commit = ""
        return f"{self.path}" + (f" ({commit})" if commit else "")


def order(index: int, round_: int, trees: Sequence[Tree]) -> list[Tree]:
    """The trees in the order they run for the benchmark at `index`, in round `round_`: alternating,
    so that each tree goes first as often as the other."""
    if (index + round_) % 2 == 0:
        return list(trees)
    return list(reversed(trees))


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def _shape(cell: str) -> str:
    return _NUMBER.sub("#", cell)


def spread(cells: Sequence[str]) -> str:
    """One cell for the same measure over several rounds: each figure as its range."""
    distinct = list(dict.fromkeys(cells))
    if len(distinct) <= 1:
        return distinct[0] if distinct else NONE
    if len({_shape(c) for c in cells}) != 1:
        return "; ".join(distinct)
    columns = list(zip(*(_NUMBER.findall(c) for c in cells), strict=True))
    pieces = iter(
        low if _value(low) == _value(high) else f"{low}-{high}"
        for low, high in ((min(col, key=_value), max(col, key=_value)) for col in columns)
    )
    return _NUMBER.sub(lambda _: next(pieces), cells[0])


def _medians(cells: Sequence[str]) -> list[float] | None:
    """The median of each figure of a cell over rounds; None when the cells differ in shape."""
    if not cells or len({_shape(c) for c in cells}) != 1:
        return None
    columns = zip(*(_NUMBER.findall(c) for c in cells), strict=True)
    return [statistics.median(_value(v) for v in col) for col in columns]


def ratios(ours: Sequence[str], baseline: Sequence[str]) -> list[float] | None:
    """This tree / baseline for each figure of a measure (medians over rounds), when comparable."""
    a, b = _medians(ours), _medians(baseline)
    if a is None or b is None or len(a) != len(b) or not 1 <= len(a) <= 2:
        return None
    if _shape(ours[0]) != _shape(baseline[0]) or 0.0 in b:
        return None
    return [x / y for x, y in zip(a, b, strict=True)]


def _result(results: Sequence[str]) -> str:
    distinct = list(dict.fromkeys(results))
    if len(distinct) == 1:
        return distinct[0]
    missed = sum(1 for r in results if r.startswith(MISS))
    if missed:
        return f"{MISS} in {missed} of {len(results)} rounds"
    return spread(results)


def _rows(tables: Sequence[Table], measure: str) -> list[Row]:
    return [row for table in tables for row in table.rows if row.measure == measure]


def merge(ours: Sequence[Table], baseline: Sequence[Table] = ()) -> Table:
    """One table from this tree's rounds (and the baseline's, when given)."""
    first = ours[0]
    merged = replace(first, rows=[], notes=list(first.notes), baseline=[] if baseline else None)
    for row in first.rows:
        mine = _rows(ours, row.measure)
        merged.rows.append(
            replace(
                row,
                ours=spread([r.ours for r in mine]),
                other=spread([r.other for r in mine]),
                ratio=spread([r.ratio for r in mine]),
                result=_result([r.result for r in mine]),
            )
        )
        if merged.baseline is None:
            continue
        theirs = _rows(baseline, row.measure)
        found = ratios([r.ours for r in mine], [r.ours for r in theirs])
        limit = NONE
        if row.baseline_limit is not None:
            ok = found is not None and found[0] <= row.baseline_limit
            limit = f"<= {row.baseline_limit:.2f}: {verdict(ok)}"
        merged.baseline.append(
            Compared(
                value=spread([r.ours for r in theirs]) if theirs else NONE,
                ratio=" / ".join(f"{r:.2f}" for r in found) if found else NONE,
                limit=limit,
            )
        )
    rounds = len(ours)
    if rounds > 1 or baseline:
        note = f"{rounds} round{'s' if rounds > 1 else ''} per tree"
        if baseline:
            note += ", the trees alternating; `this / baseline` is the ratio of the medians over rounds"
            if not first.columns[1].startswith("("):
                note += f"; the `{first.columns[1]}` column is from this tree's runs"
        merged.notes.append(note + ".")
    return merged
