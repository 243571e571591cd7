"""The landing page and the plain-text pages (transcripts, /probe?debug=true)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from html import escape
from urllib.parse import urlencode

from smtp_exporter import __version__
from smtp_exporter.metrics import SeriesState
from smtp_exporter.model import ProbeResult
from smtp_exporter.probe.command import format_text
from smtp_exporter.scheduler import TargetStatus

# Rows on the status page: a page of 10,000 targets would take the event loop ~0.1s to render.
MAX_ROWS = 1000

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
.up{color:#17702b;font-weight:bold}.down{color:#b00020;font-weight:bold}.pending{color:#777}
.phases{font-family:monospace;font-size:.85em}
"""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"


def _age(timestamp: float, now: float) -> str:
    seconds = max(0.0, now - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def transcript_url(target: str, module: str, mx_host: str | None) -> str:
    query = {"target": target, "module": module}
    if mx_host is not None:
        query["mx_host"] = mx_host
    return "/transcript?" + urlencode(query)


def _row(status: TargetStatus, state: SeriesState | None, now: float) -> str:
    config = status.config
    labels = ", ".join(f"{name}={value}" for name, value in config.labels)
    mx_host = dict(state.labels).get("mx_host") if state is not None else None
    target = config.target if mx_host is None else f"{config.target} (MX {mx_host or 'lookup failed'})"
    cells = [escape(target), escape(config.module), escape(labels)]
    result = state.last if state is not None else None
    if result is None:
        cells += ['<span class="pending">pending</span>', "", "", "", "", ""]
        return '<tr class="target">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    word = "up" if result.success else "down"
    phases = " ".join(f"{phase.phase.value}&nbsp;{_ms(phase.duration_seconds)}" for phase in result.phases)
    failure = ""
    if result.failure is not None:
        failure = escape(
            f"{result.failure.phase.value} / {result.failure.reason.value}: {result.failure.message}"
        )
    link = escape(transcript_url(config.target, config.module, mx_host))
    cells += [
        f'<span class="{word}">{word}</span>',
        escape(_age(result.start_timestamp, now)),
        _ms(result.duration_seconds),
        f'<span class="phases">{phases}</span>',
        failure,
        f'<a href="{link}">transcript</a>',
    ]
    return f'<tr class="target {word}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _rank(entry: tuple[TargetStatus, SeriesState | None]) -> int:
    result = entry[1].last if entry[1] is not None else None
    if result is None:
        return 1
    return 2 if result.success else 0


def landing_page(statuses: Iterable[TargetStatus], *, shard: tuple[int, int], source: str) -> str:
    """The status page: failing targets first, then pending ones, then healthy ones, MAX_ROWS at most."""
    now = time.time()
    entries = [(status, state) for status in statuses for state in status.series or (None,)]
    count = len({id(status) for status, _ in entries})
    entries.sort(key=_rank)
    rows = [_row(status, state, now) for status, state in entries[:MAX_ROWS]]
    if len(entries) > MAX_ROWS:
        rows.append(
            f'<tr><td colspan="9">{len(entries) - MAX_ROWS} more series (healthy or pending) not shown; '
            'see <a href="/metrics">/metrics</a>.</td></tr>'
        )
    shard_text = f", shard {shard[1]} of {shard[0]}" if shard[0] > 1 else ""
    header = "".join(
        f"<th>{name}</th>"
        for name in ("Target", "Module", "Labels", "State", "Last probe", "Duration", "Phases", "Failure", "")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>smtp-exporter</title><style>{_STYLE}</style></head>
<body>
<h1>smtp-exporter</h1>
<p>Version {escape(__version__)}. Config: {escape(source)}{escape(shard_text)}.</p>
<ul>
<li><a href="/metrics">Metrics</a></li>
<li><a href="/config">Configuration</a></li>
<li><a href="/probe?target=localhost%3A25&amp;module=smtp_handshake&amp;debug=true">Probe (debug)</a></li>
<li><a href="/-/healthy">Health</a> and <a href="/-/ready">readiness</a></li>
</ul>
<h2>Scheduled targets ({count})</h2>
<table id="targets">
<thead><tr>{header}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body></html>
"""


def transcript_text(result: ProbeResult) -> str:
    """A probe's transcript, phases and outcome as plain text (the status page's transcript link)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.start_timestamp))
    return f"Probe of {result.target} with module {result.module} at {when}\n\n{format_text(result)}\n"


def probe_debug_text(result: ProbeResult, metrics: bytes) -> str:
    """`/probe?debug=true`: the transcript, the phase table and the metrics the probe produced."""
    return f"{transcript_text(result)}\nMetrics that would have been returned:\n{metrics.decode()}"
