"""The scheduled series' lines, kept by family, and the scrape that writes them.

The store keeps one column per metric family: a list of every series' fragment of it (its
lines, `exposition.Lines`), each series at the same place in every column. A scrape then takes
each family's fragments as they lie, one flat list, instead of gathering them series by series:
at 10,000 targets that gathering (each series' own tuple of fragments, transposed) was the
largest part of a scrape's CPU after the writing itself (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from smtp_exporter.metrics.exposition import (
    EXPOSED_FAMILIES,
    IN_EVERY_SERIES,
    LINE_HEADS,
    STATE_POSITIONS,
    Buckets,
    Lines,
    SeriesState,
)
from smtp_exporter.model import ProbeResult

SCRAPE_CHUNK_BYTES = 256 * 1024
_NO_COLUMN: list[bytes] = []


class MetricsStore:
    """The scheduled series and their lines, in columns by family (see the module's doc).

    A series is added at its first result, so every series here has the lines of the families
    marked IN_EVERY_SERIES. A column is made when some series first has lines of its family (most
    families, posture's and blackbox_exporter's names, never have any) and then holds a place
    for every series, empty (`b""`) where the series has no lines of the family."""

    def __init__(self) -> None:
        self._slots: dict[SeriesState, int] = {}  # a series is its own key (by identity)
        self._series: list[SeriesState] = []  # by slot: which series to move when one goes
        self._columns: list[list[bytes] | None] = [None] * len(EXPOSED_FAMILIES)
        self._made: list[tuple[int, list[bytes]]] = []  # the columns made, with their positions

    def __len__(self) -> int:
        return len(self._series)

    def record(self, series: SeriesState, result: ProbeResult) -> ProbeResult:
        """Fold `result` into `series` and keep its lines (adding the series at its first);
        returns the result as the series keeps it (`latest`)."""
        kept, lines = series.observe(result)
        self._write(series, lines)
        return kept

    def reconfigure(
        self,
        series: SeriesState,
        *,
        buckets: Buckets,
        phase_histograms: bool,
        blackbox_names: bool,
        delivery_buckets: Buckets,
    ) -> None:
        """Apply a new config's metrics settings to `series`, and keep its lines if they change."""
        lines = series.reconfigure(
            buckets=buckets,
            phase_histograms=phase_histograms,
            blackbox_names=blackbox_names,
            delivery_buckets=delivery_buckets,
        )
        if lines is not None and series in self._slots:
            self._write(series, lines)

    def remove(self, series: SeriesState) -> None:
        """Drop `series` and its lines; the last series takes its place, so columns stay dense."""
        slot = self._slots.pop(series, None)
        if slot is None:
            return
        last = self._series.pop()
        if last is series:
            for _, column in self._made:
                column.pop()
            return
        self._series[slot] = last
        self._slots[last] = slot
        for _, column in self._made:
            column[slot] = column.pop()

    def _write(self, series: SeriesState, lines: Lines) -> None:
        columns = self._columns
        slot = self._slots.get(series)
        if slot is None:
            if lines.state_kept:  # a series removed and recorded again: nothing kept to keep
                lines = series.lines()
            slot = self._slots[series] = len(self._series)
            self._series.append(series)
            for _, column in self._made:
                column.append(b"")
        fragments = lines.fragments
        kept = STATE_POSITIONS if lines.state_kept else ()
        for position, column in self._made:  # a family without lines now: its place emptied
            if position not in fragments and position not in kept:
                column[slot] = b""
        for position, fragment in fragments.items():
            made = columns[position]
            if made is None:
                made = columns[position] = [b""] * len(self._series)
                self._made.append((position, made))
            made[slot] = fragment

    def render(self, *, openmetrics: bool) -> Iterator[bytes]:
        """The chunks of every family's block (without any `# EOF`), from the lines as they are
        at this call: join them or write them out.

        The columns are copied now, in the caller's thread: probes that complete while the body
        is written (or compressed, in another thread) change the store, not this scrape.
        A family's block is joined in pieces of about SCRAPE_CHUNK_BYTES, each only when it is
        taken, so a writer that drops every piece once written keeps few of them alive. Joined
        whole and all at once, the body (tens of megabytes at 10,000 targets) lands in the heap
        among the series' fragments, and that memory stays resident after the scrape.
        """
        # Empty places dropped only in the families some series have no lines of (each family's
        # head goes before each fragment with lines); looking for them in every family was 8% of
        # a scrape's CPU at 10,000 targets (docs/architecture.md).
        copies = [
            _NO_COLUMN if column is None else column.copy() if in_every else list(filter(None, column))
            for column, in_every in zip(self._columns, IN_EVERY_SERIES, strict=True)
        ]
        return _pieces(copies, openmetrics)


def _pieces(columns: list[list[bytes]], openmetrics: bool) -> Iterator[bytes]:
    """The families' blocks in exposition order: each family's header, then its fragments, each
    after the family's line head. `columns` hold only fragments with lines."""
    for position, family in enumerate(EXPOSED_FAMILIES):
        # Taken out of the list, so that its fragments are let go of right after their pieces
        # are written, while still in the CPU's cache, not all at once at the end of the scrape.
        column, columns[position] = columns[position], _NO_COLUMN
        if not column:
            continue
        head = LINE_HEADS[position]
        sample = column[:: len(column) // 16 + 1]
        step = SCRAPE_CHUNK_BYTES // (sum(map(len, sample)) // len(sample) + 1) + 1
        header = family.openmetrics_header if openmetrics else family.text_header
        yield header + head  # the head of the family's first line
        for start in range(0, len(column), step):
            # A fragment more than the piece's, emptied: the piece ends with the head of the
            # next piece's first line.
            piece = column[start : start + step + 1]
            if len(piece) > step:
                piece[-1] = b""
            yield head.join(piece)


__all__ = ["MetricsStore"]
