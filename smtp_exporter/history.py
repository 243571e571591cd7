"""The result history: the newest full probe results, transcripts included, shared by all targets.

As blackbox_exporter's ResultHistory does for its debug output: one bounded list for the whole
process, sized by `metrics.history_limit` (0 keeps none), so what the pages can show costs a
fixed amount of memory however many targets there are. Scheduled results and /probe results
go in alike; the oldest falls out when a new one comes in. Each entry has an id, increasing
and never reused, by which a page can link to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from smtp_exporter.model import ProbeResult


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    result: ProbeResult
    scheduled: bool  # False: a /probe request
    mx_host: str | None = None  # the series' mx_host, for a scheduled target in mx_mode each


class ResultHistory:
    """The newest `limit` results, oldest first inside; read newest first."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[HistoryEntry] = deque(maxlen=limit)
        self._next_id = 1

    @property
    def limit(self) -> int:
        maxlen = self._entries.maxlen
        assert maxlen is not None
        return maxlen

    def resize(self, limit: int) -> None:
        """Keep at most `limit` results from now on (the newest, when it shrinks)."""
        if limit != self.limit:
            self._entries = deque(self._entries, maxlen=limit)

    def add(self, result: ProbeResult, *, scheduled: bool, mx_host: str | None = None) -> None:
        if self._entries.maxlen:
            self._entries.append(HistoryEntry(self._next_id, result, scheduled, mx_host))
            self._next_id += 1

    def get(self, entry_id: int) -> HistoryEntry | None:
        """The entry with this id, if it is still kept."""
        entries = self._entries
        if not entries:
            return None
        index = entry_id - entries[0].id  # ids are consecutive inside the deque
        if 0 <= index < len(entries):
            return entries[index]
        return None

    def find(self, latest: ProbeResult, mx_host: str | None = None) -> HistoryEntry | None:
        """The scheduled entry of the probe `latest` summarises (same series, same start), if kept."""
        for entry in reversed(self._entries):
            result = entry.result
            if (
                result.start_timestamp == latest.start_timestamp
                and entry.scheduled
                and result.target == latest.target
                and result.module == latest.module
                and entry.mx_host == mx_host
            ):
                return entry
        return None

    def __iter__(self) -> Iterator[HistoryEntry]:
        return reversed(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
