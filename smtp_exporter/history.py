"""The result history: the newest full probe results, transcripts included, shared by all targets.

As blackbox_exporter's ResultHistory does for its debug output: one bounded list for the whole
process, sized by `metrics.history_limit` (0 keeps none), so what the pages can show costs a
fixed amount of memory however many targets there are. Scheduled results and /probe results
go in alike; the oldest falls out when a new one comes in. Each entry has an id, increasing
and never reused, by which a page can link to it.

An entry holds the result as its series keeps it (a success without its transcript) and the
transcript beside it: the newest results are the ones their series keep too, so the history
adds to them only their transcripts, not a second copy of each result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

from smtp_exporter.model import ProbeResult, Transcript


@dataclass(slots=True)  # not frozen, as ProbeResult: one is made for every probe
class HistoryEntry:
    id: int
    result: ProbeResult  # as kept by its series: maybe without its transcript
    transcript: Transcript
    scheduled: bool  # False: a /probe request
    mx_host: str | None = None  # the series' mx_host, for a scheduled target in mx_mode each
    ip_protocol: int | None = None  # the series' family, for a scheduled target of ip_protocol both

    def full_result(self) -> ProbeResult:
        """The result with its transcript."""
        if self.result.transcript is self.transcript:
            return self.result
        return replace(self.result, transcript=self.transcript)


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

    def add(
        self,
        result: ProbeResult,
        *,
        scheduled: bool,
        transcript: Transcript | None = None,
        mx_host: str | None = None,
        ip_protocol: int | None = None,
    ) -> None:
        """Keep `result`, with `transcript` when the result is kept without it."""
        if self._entries.maxlen:
            entry = HistoryEntry(
                self._next_id,
                result,
                result.transcript if transcript is None else transcript,
                scheduled,
                mx_host,
                ip_protocol,
            )
            self._entries.append(entry)
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

    def find(self, kept: ProbeResult) -> HistoryEntry | None:
        """The entry of `kept` (the very object a series keeps), if it is still in the history."""
        for entry in reversed(self._entries):
            if entry.result is kept:
                return entry
        return None

    def __iter__(self) -> Iterator[HistoryEntry]:
        return reversed(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
