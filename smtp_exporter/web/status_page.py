"""The status page (`/`) and the history page (`/history`), as HTML.

Summary first (series up/down/pending, by module; the config file and when it loaded; the
shard), then a filter form and one table row per series. No script at all: the filter is a GET
form, sorting is column-header links, auto-refresh is `<meta http-equiv=refresh>`, and all of
them live in the query string (status_view.py). The one stylesheet is inline and allowed by its
hash in the page's Content-Security-Policy, which allows nothing else. Below 760 px the rows
become cards (each cell labelled by its column), so a phone shows every fact without
scrolling sideways.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import time
from collections.abc import Callable, Iterable
from html import escape
from urllib.parse import urlencode

from smtp_exporter import __version__
from smtp_exporter.config.allowlist import TargetAllowlist
from smtp_exporter.history import HistoryEntry
from smtp_exporter.model import AttemptOutcome, ProbeResult
from smtp_exporter.status import TargetStatus
from smtp_exporter.web.charts import duration_text, phase_bar, sparkline
from smtp_exporter.web.status_view import (
    STATES,
    Row,
    Summary,
    View,
    build_rows,
    series_name,
    summarize,
)

# Rows on the status page: a page of 10,000 targets would take the event loop ~0.1s to render.
MAX_ROWS = 1000
# Results listed on the history page.
MAX_RECENT_ROWS = 100

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}
a{color:#0b57d0}
nav a{margin-right:1em}
.summary{font-size:1.1em;margin:.5em 0}
.meta,.muted,caption{color:#555}
ul.modules{margin:.2em 0 .8em;padding-left:1.2em}
form{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:end;margin:.8em 0}
label{display:flex;flex-direction:column;font-size:.85em;color:#444}
input,select,button{font:inherit;padding:.2em .4em}
table{border-collapse:collapse;width:100%;font-size:13px}
caption{text-align:left;padding:.3em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .35em;text-align:left;vertical-align:top}
thead th{background:#f3f4f6}
thead th a{color:inherit}
tbody th{font-weight:600;min-width:10em;overflow-wrap:anywhere}
.sub{display:block;font-weight:400;font-size:.9em}
.badge{display:inline-block;border-radius:.7em;padding:0 .55em;font-size:.85em;font-weight:600;white-space:nowrap}
.badge.up{background:#d9f2df;color:#125b24}
.badge.down{background:#fbe0e0;color:#8c1020}
.badge.pending{background:#eceff1;color:#444}
.badge.warn{background:#fff1c9;color:#6b4a00}
.num,.nowrap{white-space:nowrap}
.num{font-variant-numeric:tabular-nums}
.msg{min-width:11em;max-width:24em;overflow-wrap:anywhere}
td.tls{min-width:8em}
svg.bar rect.p0{fill:#5b8def}
svg.bar rect.p1{fill:#a9c3f7}
svg.bar rect.failed{fill:#c62828}
svg{vertical-align:middle}
svg.spark polyline{fill:none;stroke:#5b8def;stroke-width:1.5}
svg.spark circle{fill:#1d1d1f}
.where{display:block;font:12px monospace;color:#8c1020;white-space:nowrap}
td.links a{display:block;white-space:nowrap}
@media (max-width:760px){
body{margin:.6em}
table,thead,tbody,tr,th,td{display:block}
thead{position:absolute;left:-9999px}
tbody tr{border:1px solid #ccc;border-radius:6px;margin:0 0 .7em;padding:.3em .5em}
tbody td,tbody th{border:0;padding:.15em 0}
tbody td:empty{display:none}
caption{display:block}
tbody td::before{content:attr(data-label) ": ";font-weight:600;color:#555}
td.links a{display:inline;margin-right:1em}
.msg{max-width:none}
}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# Nothing but the inline stylesheet; forms may only go back to this exporter.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

_COLUMNS = (  # (header, sort column or "", cell class); the first is each row's header cell
    ("Target, labels", "target", ""),
    ("Module", "module", ""),
    ("State", "state", ""),
    ("Last probe", "age", "num"),
    ("Next", "next", "num"),
    ("Duration", "duration", "num"),
    ("Phases", "", "nowrap"),
    ("Failure", "failure", "msg"),
    ("MX host, address", "mx", "path"),
    ("TLS", "tls", "tls"),
    ("Recent", "", ""),
    ("Links", "", "links"),
)


def _age(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def _interval(seconds: float) -> str:
    return f"{seconds:g}s" if seconds < 120 else _age(seconds)


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def series_query(target: str, module: str, mx_host: str | None, ip_protocol: int | None) -> str:
    """The query string naming a scheduled series, as /transcript and /history read it."""
    query = {"target": target, "module": module}
    if mx_host is not None:
        query["mx_host"] = mx_host
    if ip_protocol is not None:
        query["ip_protocol"] = str(ip_protocol)
    return urlencode(query)


def _badge(word: str) -> str:
    return f'<span class="badge {word}">{word}</span>'


def _failure_text(result: ProbeResult) -> str:
    if result.failure is None:
        return ""
    failure = result.failure
    return f"{failure.phase.value} / {failure.reason.value}: {failure.message}"


def _failure_cell(row: Row, now: float) -> str:
    result, state = row.result, row.state
    if result is None or state is None:
        return ""
    if result.failure is not None:
        return escape(_failure_text(result))
    earlier = state.latest_failure
    if earlier is None:
        return ""
    ago = _age(now - earlier.start_timestamp)
    return f'<span class="muted">last failed {ago} ago: {escape(_failure_text(earlier))}</span>'


def _path_cell(result: ProbeResult) -> str:
    parts = []
    if result.mx is not None:
        parts.append(f"{escape(result.mx.host)} <span class=muted>(pref {result.mx.preference})</span>")
    if result.address is not None:
        address = result.address
        host = f"[{address.ip}]" if address.family == 6 else address.ip
        parts.append(f'<span class="nowrap">{escape(host)}:{address.port}</span>')
    if result.fallback:
        first = next(a for a in result.attempts if a.outcome is AttemptOutcome.FAILED)
        why = "" if first.reason is None else f" ({first.reason.value})"
        parts.append(f'<span class="badge warn">fallback</span> {escape(first.address)} failed{why}')
    return "<br>".join(parts)


def _tls_cell(result: ProbeResult, now: float) -> str:
    tls = result.tls
    if tls is None:
        return '<span class="muted">no TLS</span>'
    parts = [escape(tls.version)]
    expiry = tls.earliest_not_after_timestamp
    if expiry is not None:
        days = (expiry - now) / 86400
        when = f"expired {-days:.0f} d ago" if days < 0 else f"expires in {days:.0f} d"
        parts.append(f'<span class="badge warn">{when}</span>' if days < 14 else when)
    if tls.verified:
        parts.append("verified")
    else:
        why = tls.verify_error or "verification off"
        parts.append(f'<span class="badge warn">not verified</span> {escape(why)}')
    return ", ".join(parts)


def _row(row: Row, allowlist: TargetAllowlist, now: float) -> str:
    status, state, result = row.status, row.state, row.result
    config = status.config
    mx_host = None if state is None else state.mx_host
    ip_protocol = None if state is None else state.ip_protocol
    query = escape(series_query(config.target, config.module, mx_host, ip_protocol))
    upcoming = "probing now" if status.in_flight else f"in {_age(status.next_probe_timestamp - now)}"
    cells: list[str] = [
        escape(config.module),
        _badge(row.word),
        "" if result is None else f"{_age(now - result.start_timestamp)} ago",
        f'{upcoming}<span class="muted sub">every {_interval(config.interval)}</span>',
        "" if result is None else duration_text(result.duration_seconds),
        "" if result is None else phase_bar(result),
        _failure_cell(row, now),
        "" if result is None else _path_cell(result),
        "" if result is None else _tls_cell(result, now),
        "" if state is None else sparkline(state.recent_durations()),
    ]
    links = []
    if result is not None:
        links.append(f'<a href="/transcript?{query}">transcript</a>')
        links.append(f'<a href="/history?{query}">history</a>')
    if allowlist.allows_target(status.target):
        probe = escape(urlencode({"target": config.target, "module": config.module, "debug": "true"}))
        links.append(f'<a href="/probe?{probe}">probe now</a>')
    cells.append("".join(links))
    data = f'data-state="{row.word}" data-module="{escape(config.module)}"'
    if result is not None:
        data += f' data-duration="{result.duration_seconds!r}" data-started="{result.start_timestamp!r}"'
    tds = "".join(
        f'<td data-label="{label}"{f" class={css}" if css else ""}>{cell}</td>'
        for (label, _, css), cell in zip(_COLUMNS[1:], cells, strict=True)
    )
    labels = ", ".join(f"{key}={value}" for key, value in config.labels)
    name = escape(row.name) + (f'<span class="muted sub">{escape(labels)}</span>' if labels else "")
    return f'<tr class="series {row.word}" {data}><th scope="row">{name}</th>{tds}</tr>'


def _summary(summary: Summary, view: View) -> str:
    counts = ", ".join(
        f'<a href="{escape(view.url(state=word))}"><span data-count="{word}">{summary.states[word]}</span> '
        f"{word}</a>"
        for word in STATES
    )
    modules = "".join(
        f'<li data-module="{escape(module)}"><strong>{escape(module)}</strong>: '
        + ", ".join(f"{states[word]} {word}" for word in STATES)
        + "</li>"
        for module, states in summary.modules.items()
    )
    return (
        f'<p class="summary" id="summary"><strong><span data-count="series">{summary.series}</span> series</strong> '
        f"of {summary.targets} targets: {counts}</p>\n<ul class=modules>{modules}</ul>"
    )


def _form(view: View) -> str:
    def options(name: str, choices: Iterable[tuple[str, str]], current: str) -> str:
        return "".join(
            f'<option value="{value}"{" selected" if value == current else ""}>{text}</option>'
            for value, text in choices
        )

    states = options("state", [("", "all"), *((word, word) for word in STATES)], view.state)
    refresh = options("refresh", [("", "off"), ("10", "every 10 s"), ("30", "every 30 s")], view.refresh)
    sort = ("-" if view.descending else "") + view.sort if view.sort else ""
    hidden = f'<input type="hidden" name="sort" value="{escape(sort)}">' if sort else ""
    return (
        '<form method="get" action="/" role="search">'
        f'<label>Filter<input type="search" name="q" value="{escape(view.q)}" '
        'placeholder="target, label, reason, address"></label>'
        f'<label>State<select name="state">{states}</select></label>'
        f'<label>Auto-refresh<select name="refresh">{refresh}</select></label>'
        f'{hidden}<button type="submit">Apply</button> <a href="/">Reset</a></form>'
    )


def _header(view: View) -> str:
    cells = []
    for name, column, _ in _COLUMNS:
        if not column:
            cells.append(f'<th scope="col">{name}</th>')
            continue
        sorted_here = column == view.sort
        aria = f' aria-sort="{"descending" if view.descending else "ascending"}"' if sorted_here else ""
        arrow = (" &#9660;" if view.descending else " &#9650;") if sorted_here else ""
        cells.append(
            f'<th scope="col"{aria}><a href="{escape(view.sort_url(column))}">{name}</a>{arrow}</th>'
        )
    return "".join(cells)


def _document(title: str, body: str, refresh: str = "") -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        '<header><h1>smtp-exporter</h1><nav><a href="/">Status</a><a href="/history">Recent probes</a>'
        '<a href="/metrics">Metrics</a><a href="/config">Configuration</a>'
        '<a href="/-/healthy">Health</a><a href="/-/ready">Readiness</a></nav></header>\n'
        f"{body}\n</body></html>\n"
    )


def status_page(
    statuses: Iterable[TargetStatus],
    view: View,
    *,
    allowlist: TargetAllowlist,
    source: str,
    loaded_at: float,
    shard: tuple[int, int],
) -> str:
    now = time.time()
    rows = build_rows(statuses)
    shown = view.apply(rows)
    shard_text = f"shard {shard[1]} of {shard[0]}" if shard[0] > 1 else "not sharded"
    loaded = f"loaded {_utc(loaded_at)} ({_age(now - loaded_at)} ago)" if loaded_at else "not loaded yet"
    order = (
        f"sorted by {view.sort}{', descending' if view.descending else ''}" if view.sort else "failing first"
    )
    caption = f"Scheduled series: {len(shown)} of {len(rows)} shown, {order}"
    if view.refresh:
        caption += f"; refreshed every {view.refresh} s"
    more = ""
    if len(shown) > MAX_ROWS:
        more = (
            f'<p id="more">{len(shown) - MAX_ROWS} more series not shown: narrow the filter, or see '
            '<a href="/metrics">/metrics</a>.</p>'
        )
    body = (
        f"{_summary(summarize(rows), view)}\n"
        f'<p class="meta">Config file {escape(source)}, {loaded}; {shard_text}; version {escape(__version__)}.</p>\n'
        f"{_form(view)}\n"
        f'<table id="targets"><caption>{escape(caption)}</caption>\n'
        f"<thead><tr>{_header(view)}</tr></thead>\n<tbody>\n"
        + "\n".join(_row(row, allowlist, now) for row in shown[:MAX_ROWS])
        + f"\n</tbody></table>\n{more}"
    )
    return _document("smtp-exporter status", body, view.refresh)


def _recent_row(entry: HistoryEntry, now: float) -> str:
    result = entry.result
    word = "up" if result.success else "down"
    cells = [
        f'<span class="num">{_age(now - result.start_timestamp)} ago</span>',
        escape(series_name(result.target, entry.mx_host, entry.ip_protocol)),
        escape(result.module),
        "scheduled" if entry.scheduled else "/probe",
        _badge(word),
        f'<span class="num">{duration_text(result.duration_seconds)}</span>',
        phase_bar(result),
        escape(_failure_text(result)),
        f'<a href="/transcript?id={entry.id}">transcript</a>',
    ]
    return (
        f'<tr class="recent" data-state="{word}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    )


def history_page(
    entries: Iterable[HistoryEntry],
    history_limit: int,
    series: tuple[str, str, str | None, int | None] | None,
    durations: Callable[[], list[float]] | None = None,
) -> str:
    """The newest results of the history (MAX_RECENT_ROWS at most), of one series when given."""
    now = time.time()
    rows: list[str] = []
    for entry in entries:
        if len(rows) == MAX_RECENT_ROWS:
            break
        if series is not None:
            result = entry.result
            if (result.target, result.module, entry.mx_host, entry.ip_protocol) != series:
                continue
        rows.append(_recent_row(entry, now))
    title = (
        "Recent probes"
        if series is None
        else f"Recent probes of {series_name(series[0], series[2], series[3])}"
    )
    if series is not None:
        title += f" with module {series[1]}"
    spark = ""
    if durations is not None:
        spark = f"<p>Durations of its last probes: {sparkline(durations())}</p>"
    header = "".join(
        f'<th scope="col">{name}</th>'
        for name in ("Started", "Target", "Module", "From", "State", "Duration", "Phases", "Failure", "Links")
    )
    body = (
        f"<h2>{escape(title)}</h2>\n{spark}"
        f"<p>The newest of the last {history_limit} results kept with their transcripts "
        "(metrics.history_limit), scheduled and /probe alike.</p>\n"
        f'<table id="recent"><caption>{len(rows)} results, newest first</caption>\n'
        f"<thead><tr>{header}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )
    return _document(title, body)
