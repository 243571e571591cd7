"""Every text form of a probe result: the probe command's text and JSON, the transcript and
debug pages and the scheduler's transcript log line (the HTML pages are web/status_page.py).

Rendering only: everything here takes results and returns text (or the JSON document as a
dict), reads no clock, and keeps nothing.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from smtp_exporter.model import DeliveryInfo, ProbeResult

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
            "chain_earliest_not_after_timestamp": tls.chain_not_after_timestamp,
        },
        "server": {"banner": server.banner, "extensions": {k: list(v) for k, v in server.extensions}},
        "address": None
        if address is None
        else {"ip": address.ip, "port": address.port, "family": address.family},
        "mx": None if mx is None else {"host": mx.host, "preference": mx.preference},
        "pipelined": result.pipelined,
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
        "posture": {
            report.check: {
                "last_run_timestamp": report.ran_at,
                "reasons": list(report.reasons),
                **dict(report.details),
            }
            for report in result.posture
        },
        "delivery": None if result.delivery is None else delivery_json(result.delivery),
        "transcript": [
            {"offset_seconds": t.offset_seconds, "direction": t.direction, "text": t.text}
            for t in result.transcript
        ],
    }


def delivery_json(delivery: DeliveryInfo) -> dict[str, Any]:
    """The `delivery` object (a module with `delivery`): exactly these keys, a contract."""
    return {
        "message_id": delivery.message_id,
        "token": delivery.token,
        "duration_seconds": delivery.duration_seconds,
        "hops": delivery.hops,
        "received_span_seconds": delivery.received_span_seconds,
        "authentication_results": dict(delivery.authentication_results),
        "cleaned_up": delivery.cleaned_up,
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
            f"  presented chain expires {_date(tls.chain_not_after_timestamp)} (its earliest certificate)",
        ]
    if result.posture:
        out += ["", "Posture (never changes the probe's success):"]
        for report in result.posture:
            out.append(f"  {report.check}, run {_date(report.ran_at)}:")
            out += [f"    {reason}" for reason in report.reasons]
    delivery = result.delivery
    if delivery is not None:
        took = (
            "not found"
            if delivery.duration_seconds is None
            else f"found after {_ms(delivery.duration_seconds)}"
        )
        results = ", ".join(f"{m}={r}" for m, r in delivery.authentication_results) or "-"
        out += [
            "",
            f"Delivery: {delivery.message_id} {took}; token {delivery.token}",
            f"  hops {delivery.hops if delivery.hops is not None else '-'}, received span "
            f"{'-' if delivery.received_span_seconds is None else f'{delivery.received_span_seconds:g}s'}, "
            f"authentication results {results}, cleaned up {delivery.cleaned_up}",
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
