"""The status page's rows and what the query string asks of them: filter, sort, refresh.

Everything the page can be asked is in its query string (`?q=mx1&state=down&sort=-duration&
refresh=30`), read here and written back into every link and form on the page, so that a link
can be shared, the filter works without JavaScript, and a refresh (a `<meta http-equiv=refresh>`
reloading the same URL) keeps what the reader chose. Values the page does not know are read as
the default, never an error: the page is for reading, and a stale bookmark should still open.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from smtp_exporter.metrics import SeriesState
from smtp_exporter.model import ProbeResult
from smtp_exporter.status import TargetStatus

STATES = ("down", "pending", "up")  # the order failing-first sorts them in
REFRESH_SECONDS = ("10", "30")  # auto-refresh choices besides off
MAX_QUERY_TEXT = 200  # a filter longer than this is cut: it is matched against every row


def series_name(target: str, mx_host: str | None, ip_protocol: int | None) -> str:
    """A scheduled series as the pages name it: its target, MX host (mx_mode each) and family
    (ip_protocol both)."""
    if mx_host is not None:
        target = f"{target} (MX {mx_host or 'lookup failed'})"
    return target if ip_protocol is None else f"{target} (IPv{ip_protocol})"


@dataclass(frozen=True, slots=True)
class Row:
    """One series (or a target without a result yet) as the page shows it."""

    status: TargetStatus
    state: SeriesState | None
    name: str
    word: str  # up, down or pending
    haystack: str  # what the text filter searches, lower case

    @property
    def result(self) -> ProbeResult | None:
        return None if self.state is None else self.state.latest

    @property
    def rank(self) -> int:
        return STATES.index(self.word)


def _haystack(status: TargetStatus, name: str, result: ProbeResult | None) -> str:
    config = status.config
    parts = [name, config.module, *(f"{key}={value}" for key, value in config.labels)]
    if result is not None:
        if result.failure is not None:
            failure = result.failure
            parts += [failure.phase.value, failure.reason.value, failure.message]
        if result.address is not None:
            parts.append(result.address.ip)
        if result.mx is not None:
            parts.append(result.mx.host)
        if result.tls is not None:
            parts.append(result.tls.version)
    return "\n".join(parts).lower()


def build_rows(statuses: Iterable[TargetStatus]) -> list[Row]:
    """One row per series; a target without a result yet is one pending row."""
    rows = []
    for status in statuses:
        for state in status.series or (None,):
            result = None if state is None else state.latest
            mx_host = None if state is None else state.mx_host
            ip_protocol = None if state is None else state.ip_protocol
            name = series_name(status.config.target, mx_host, ip_protocol)
            word = "pending" if result is None else "up" if result.success else "down"
            rows.append(Row(status, state, name, word, _haystack(status, name, result)))
    return rows


@dataclass(frozen=True, slots=True)
class Summary:
    series: int
    targets: int
    states: Counter[str]
    modules: dict[str, Counter[str]]  # module -> state -> series


def summarize(rows: Iterable[Row]) -> Summary:
    states: Counter[str] = Counter()
    modules: dict[str, Counter[str]] = {}
    targets = set()
    series = 0
    for row in rows:
        series += 1
        targets.add(id(row.status))
        states[row.word] += 1
        modules.setdefault(row.status.config.module, Counter())[row.word] += 1
    return Summary(series, len(targets), states, dict(sorted(modules.items())))


# -- sorting ---------------------------------------------------------------------------------


def _failure(row: Row) -> str | None:
    result = row.result
    if result is None or result.failure is None:
        return None
    return f"{result.failure.phase.value} {result.failure.reason.value}"


def _tls_expiry(row: Row) -> float | None:
    result = row.result
    return None if result is None or result.tls is None else result.tls.earliest_not_after_timestamp


# Column -> its sort key (None: the row has no value and sorts last, in either order).
SORT_KEYS: Mapping[str, Callable[[Row], object]] = {
    "target": lambda row: row.name.lower(),
    "module": lambda row: row.status.config.module,
    "state": lambda row: row.rank,
    "age": lambda row: None if row.result is None else -row.result.start_timestamp,
    "interval": lambda row: row.status.config.interval,
    "next": lambda row: row.status.next_probe_timestamp,
    "duration": lambda row: None if row.result is None else row.result.duration_seconds,
    "failure": _failure,
    "mx": lambda row: None if row.result is None or row.result.mx is None else row.result.mx.host,
    "tls": _tls_expiry,
}


@dataclass(frozen=True, slots=True)
class View:
    """What the query string asks for: filter text and state, sort column and order, refresh."""

    q: str = ""
    state: str = ""  # "" (all) or one of STATES
    sort: str = ""  # "" (failing first) or a SORT_KEYS column
    descending: bool = False
    refresh: str = ""  # "" (off) or one of REFRESH_SECONDS

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> View:
        state = query.get("state", "")
        refresh = query.get("refresh", "")
        sort = query.get("sort", "")
        descending = sort.startswith("-")
        sort = sort.removeprefix("-")
        known = sort in SORT_KEYS
        return cls(
            q=query.get("q", "").strip()[:MAX_QUERY_TEXT],
            state=state if state in STATES else "",
            sort=sort if known else "",
            descending=descending and known,
            refresh=refresh if refresh in REFRESH_SECONDS else "",
        )

    def params(self, **changes: str) -> dict[str, str]:
        """The query string's parameters (defaults left out), with `changes` applied."""
        sort = ("-" if self.descending else "") + self.sort if self.sort else ""
        params = {"q": self.q, "state": self.state, "sort": sort, "refresh": self.refresh}
        params.update(changes)
        return {key: value for key, value in params.items() if value}

    def url(self, **changes: str) -> str:
        query = urlencode(self.params(**changes))
        return "/?" + query if query else "/"

    def sort_url(self, column: str) -> str:
        """The link of a column header: sort by it, or reverse the order when it is the sort."""
        if column == self.sort:
            return self.url(sort=column if self.descending else "-" + column)
        return self.url(sort=column)

    def matches(self, row: Row) -> bool:
        if self.state and row.word != self.state:
            return False
        return all(word in row.haystack for word in self.q.lower().split())

    def apply(self, rows: list[Row]) -> list[Row]:
        """The rows this view shows, in its order: failing first, then pending, then healthy,
        each by name, unless a column is asked for (rows without a value for it go last)."""
        shown = sorted((row for row in rows if self.matches(row)), key=lambda row: (row.rank, row.name))
        if not self.sort:
            return shown
        key = SORT_KEYS[self.sort]
        valued = [(value, row) for row in shown if (value := key(row)) is not None]
        valued.sort(key=lambda pair: pair[0], reverse=self.descending)  # type: ignore[arg-type,return-value]
        return [row for _, row in valued] + [row for row in shown if key(row) is None]
