"""Every text form of a probe result: the probe command's text and JSON, the transcript and
debug pages, the scheduler's transcript log line, and the status page.

Rendering only: everything here takes results and states and returns text (or the JSON
document as a dict), reads no clock but for "how long ago" on the status page, and keeps nothing.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable
from html import escape
from typing import Any
from urllib.parse import urlencode

from smtp_exporter import __version__
from smtp_exporter.history import HistoryEntry
from smtp_exporter.metrics import SeriesState
from smtp_exporter.model import AttemptOutcome, ProbeResult
from smtp_exporter.status import TargetStatus

# Rows on the status page: a page of 10,000 targets would take the event loop ~0.1s to render.
MAX_ROWS = 1000
# Recent results listed from the history on the status page.
MAX_RECENT_ROWS = 100


# -- the JSON document ----------------------------------------------------------------------------


def probe_json(result: ProbeResult) -> dict[str, Any]:
    """The JSON document of `smtp-exporter probe --output json` (its keys are a contract)."""
    failure, tls, server, address, mx = result.failure, result.tls, result.server, result.address, result.mx
    return {
        "target": result.target,
        "module": result.module,
        "success": result.success,
        "duration_seconds": result.duration_seconds,
        "failure": None
        if failure is None
        else {"phase": failure.phase.value, "reason": failure.reason.value, "message": failure.message},
        "phases": [
            {
                "phase": p.phase.value,
                "duration_seconds": p.duration_seconds,
                "reply_code": p.reply_code,
                "enhanced_status": p.enhanced_status,
                "reply": p.reply,
            }
            for p in result.phases
        ],
        "tls": None
        if tls is None
        else {
            "version": tls.version,
            "cipher": tls.cipher,
            "verified": tls.verified,
            "verify_error": tls.verify_error,
            "cert_not_before_timestamp": tls.cert_not_before_timestamp,
            "cert_not_after_timestamp": tls.cert_not_after_timestamp,
            "subject": tls.subject,
            "issuer": tls.issuer,
            "sans": list(tls.sans),
            "fingerprint_sha256": tls.fingerprint_sha256,
        },
        "server": {"banner": server.banner, "extensions": {k: list(v) for k, v in server.extensions}},
        "address": None
        if address is None
        else {"ip": address.ip, "port": address.port, "family": address.family},
        "mx": None if mx is None else {"host": mx.host, "preference": mx.preference},
        "attempts": [
            {
                "mx_host": a.mx_host,
                "address": a.address,
                "family": a.family,
                "outcome": a.outcome.value,
                "phase": None if a.phase is None else a.phase.value,
                "reason": None if a.reason is None else a.reason.value,
                "duration_seconds": a.duration_seconds,
            }
            for a in result.attempts
        ],
        "transcript": [
            {"offset_seconds": t.offset_seconds, "direction": t.direction, "text": t.text}
            for t in result.transcript
        ],
    }


# -- plain text -----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}ms"


def _date(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def transcript_lines(result: ProbeResult, *, indent: str = "", decimals: int = 3) -> str:
    """The transcript, one line per event: offset from the start, direction (C, S, *), text."""
    return "\n".join(
        f"{indent}{line.offset_seconds * 1000:9.{decimals}f}ms {line.direction} {line.text}"
        for line in result.transcript
    )


def format_text(result: ProbeResult, *, transcript_gone: str | None = None) -> str:
    """The human form: transcript, phase table, TLS summary and one result line.

    `transcript_gone`: why the transcript is not shown, for a result kept without it.
    """
    if transcript_gone is None:
        out = ["Transcript:"]
        if len(result.transcript):
            out.append(transcript_lines(result, indent="  ", decimals=2))
    else:
        out = [f"Transcript: {transcript_gone}"]
    out += ["", "Phases:", f"  {'phase':<10} {'duration':>10}  {'code':>4}  {'status':<8} reply"]
    for p in result.phases:
        code = "" if p.reply_code is None else str(p.reply_code)
        out.append(
            f"  {p.phase.value:<10} {_ms(p.duration_seconds):>10}  {code:>4}  {p.enhanced_status or '':<8} {p.reply or ''}"
        )
    if result.attempts:
        out += ["", "Attempts:"]
        for number, a in enumerate(result.attempts, 1):
            where = f" (MX {a.mx_host})" if a.mx_host is not None else ""
            why = (
                f" in {a.phase.value}: {a.reason.value}"
                if a.phase is not None and a.reason is not None
                else ""
            )
            out.append(
                f"  {number}. {a.address}{where} IPv{a.family} {a.outcome.value}{why} {_ms(a.duration_seconds)}"
            )
    if result.tls is not None:
        tls = result.tls
        verified = "verified" if tls.verified else f"NOT verified ({tls.verify_error or 'verification off'})"
        out += [
            "",
            f"TLS: {tls.version} {tls.cipher}, certificate {verified}",
            f"  subject {tls.subject}, issuer {tls.issuer}",
            f"  valid {_date(tls.cert_not_before_timestamp)} to {_date(tls.cert_not_after_timestamp)}",
            f"  names {', '.join(tls.sans) or '-'}; sha256 {tls.fingerprint_sha256}",
        ]
    where = ""
    if result.address is not None:
        where = f" via {result.address.ip} port {result.address.port}"
    if result.mx is not None:
        where += f" (MX {result.mx.host} preference {result.mx.preference})"
    out.append("")
    if result.failure is None:
        out.append(f"SUCCESS {result.target} module={result.module} in {_ms(result.duration_seconds)}{where}")
    else:
        f = result.failure
        out.append(
            f"FAILURE {result.target} module={result.module} in {_ms(result.duration_seconds)}{where}: "
            f"phase={f.phase.value} reason={f.reason.value}: {f.message}"
        )
    return "\n".join(out)


def transcript_text(result: ProbeResult, *, transcript_gone: str | None = None) -> str:
    """A probe's transcript, phases and outcome as plain text (the /transcript page)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.start_timestamp))
    body = format_text(result, transcript_gone=transcript_gone)
    return f"Probe of {result.target} with module {result.module} at {when}\n\n{body}\n"


def transcript_gone(history_limit: int) -> str:
    """What /transcript says of a result whose transcript is no longer kept."""
    return (
        f"no longer kept: only the newest {history_limit} probe results keep their transcripts "
        "(metrics.history_limit)"
    )


def series_transcript_text(
    latest: ProbeResult,
    latest_transcript: ProbeResult | None,
    failure: ProbeResult | None,
    history_limit: int,
) -> str:
    """/transcript for a scheduled series: its latest probe (with the transcript when
    `latest_transcript` still has it), then its latest failure when a success came since."""
    if latest_transcript is not None:
        text = transcript_text(latest_transcript)
    elif latest.failure is not None:  # a failure is kept with its transcript
        text = transcript_text(latest)
    else:
        text = transcript_text(latest, transcript_gone=transcript_gone(history_limit))
    if failure is not None and failure is not latest:
        text += f"\nThe latest failed probe:\n\n{transcript_text(failure)}"
    return text


def probe_debug_text(result: ProbeResult, metrics: bytes) -> str:
    """`/probe?debug=true`: the transcript, the phase table and the metrics the probe produced."""
    return f"{transcript_text(result)}\nMetrics that would have been returned:\n{metrics.decode()}"


# -- the status page ------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
.up{color:#17702b;font-weight:bold}.down{color:#b00020;font-weight:bold}.pending{color:#777}
.phases{font-family:monospace;font-size:.85em}
"""


def _page_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"


def _age(timestamp: float, now: float) -> str:
    seconds = max(0.0, now - timestamp)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def transcript_url(target: str, module: str, mx_host: str | None, ip_protocol: int | None = None) -> str:
    query = {"target": target, "module": module}
    if mx_host is not None:
        query["mx_host"] = mx_host
    if ip_protocol is not None:
        query["ip_protocol"] = str(ip_protocol)
    return "/transcript?" + urlencode(query)


def series_name(target: str, mx_host: str | None, ip_protocol: int | None) -> str:
    """A scheduled series as the pages name it: its target, MX host (mx_mode each) and family
    (ip_protocol both)."""
    if mx_host is not None:
        target = f"{target} (MX {mx_host or 'lookup failed'})"
    return target if ip_protocol is None else f"{target} (IPv{ip_protocol})"


def _failure_text(result: ProbeResult) -> str:
    if result.failure is None:
        return ""
    failure = result.failure
    return f"{failure.phase.value} / {failure.reason.value}: {failure.message}"


def _row(status: TargetStatus, state: SeriesState | None, now: float) -> str:
    config = status.config
    labels = ", ".join(f"{name}={value}" for name, value in config.labels)
    mx_host = state.mx_host if state is not None else None
    ip_protocol = state.ip_protocol if state is not None else None
    cells = [escape(series_name(config.target, mx_host, ip_protocol)), escape(config.module), escape(labels)]
    result = state.latest if state is not None else None
    if state is None or result is None:
        cells += ['<span class="pending">pending</span>', "", "", "", "", ""]
        return '<tr class="target">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    word = "up" if result.success else "down"
    phases = " ".join(
        f"{phase.phase.value}&nbsp;{_page_ms(phase.duration_seconds)}" for phase in result.phases
    )
    failure = escape(_failure_text(result))
    earlier = state.latest_failure
    if result.success and earlier is not None:
        failure = escape(f"last failed {_age(earlier.start_timestamp, now)}: {_failure_text(earlier)}")
    if result.fallback:
        first = next(a for a in result.attempts if a.outcome is AttemptOutcome.FAILED)
        used = result.address.ip if result.address is not None else "another candidate"
        fallback = f"via fallback: {first.address} failed ({first.reason}), delivered via {used}"
        failure = escape(fallback) + (f"<br>{failure}" if failure else "")
    link = escape(transcript_url(config.target, config.module, mx_host, ip_protocol))
    cells += [
        f'<span class="{word}">{word}</span>',
        escape(_age(result.start_timestamp, now)),
        _page_ms(result.duration_seconds),
        f'<span class="phases">{phases}</span>',
        failure,
        f'<a href="{link}">transcript</a>',
    ]
    return f'<tr class="target {word}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _rank(entry: tuple[TargetStatus, SeriesState | None]) -> int:
    result = entry[1].latest if entry[1] is not None else None
    if result is None:
        return 1
    return 2 if result.success else 0


def _recent_row(entry: HistoryEntry, now: float) -> str:
    result = entry.result
    word = "up" if result.success else "down"
    target = series_name(result.target, entry.mx_host, entry.ip_protocol)
    cells = [
        escape(_age(result.start_timestamp, now)),
        escape(target),
        escape(result.module),
        "scheduled" if entry.scheduled else "/probe",
        f'<span class="{word}">{word}</span>',
        _page_ms(result.duration_seconds),
        escape(_failure_text(result)),
        f'<a href="/transcript?id={entry.id}">transcript</a>',
    ]
    return '<tr class="recent">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def landing_page(
    statuses: Iterable[TargetStatus],
    recent: Iterable[HistoryEntry],
    *,
    shard: tuple[int, int],
    source: str,
    history_limit: int,
) -> str:
    """The status page: failing targets first, then pending ones, then healthy ones (MAX_ROWS at
    most); then the newest results of the history, scheduled and /probe alike."""
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
    recent_rows: list[str] = []
    for entry in recent:
        if len(recent_rows) == MAX_RECENT_ROWS:
            break
        recent_rows.append(_recent_row(entry, now))
    shard_text = f", shard {shard[1]} of {shard[0]}" if shard[0] > 1 else ""
    header = "".join(
        f"<th>{name}</th>"
        for name in ("Target", "Module", "Labels", "State", "Last probe", "Duration", "Phases", "Failure", "")
    )
    recent_header = "".join(
        f"<th>{name}</th>"
        for name in ("Started", "Target", "Module", "From", "State", "Duration", "Failure", "")
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
<h2>Recent probes</h2>
<p>The newest of the last {history_limit} results kept with their transcripts (metrics.history_limit).</p>
<table id="recent">
<thead><tr>{recent_header}</tr></thead>
<tbody>
{chr(10).join(recent_rows)}
</tbody>
</table>
</body></html>
"""
