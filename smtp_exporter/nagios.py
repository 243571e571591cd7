"""`smtp-exporter probe --output nagios`: a probe result in the Nagios plugin API, for Nagios,
Icinga, Naemon and Sensu's check commands (the way check_smtp reports).

One line on stdout, `SMTP <STATE> - <text>|<perfdata>`, and the exit status of the state:
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (usage and config errors, decided by the command). The
duration thresholds apply to the whole probe (the perfdata item `time`), the certificate
thresholds to the time left until the certificate's expiry; with none given, only the probe's
success decides. Rendering only: the caller passes the clock.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from smtp_exporter.config.durations import format_duration
from smtp_exporter.model import ProbeResult

DAY = 86400.0


class NagiosState(enum.IntEnum):
    """The plugin API's states; the value is the exit status."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class NagiosThresholds:
    """`--warning`/`--critical` (seconds of probe duration, alert above) and
    `--cert-warning`/`--cert-critical` (seconds left until the certificate expires, alert below)."""

    warning: float | None = None
    critical: float | None = None
    cert_warning: float | None = None
    cert_critical: float | None = None

    @property
    def checks_certificate(self) -> bool:
        return self.cert_warning is not None or self.cert_critical is not None


def _number(value: float) -> str:
    """A perfdata number: plain decimals (the API has no exponent notation), no trailing zeros."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def _plain(text: str) -> str:
    """Text for the status line: one line, and no `|`, which starts the perfdata."""
    return " ".join(text.replace("|", "/").split())


def _perfdata(result: ProbeResult, thresholds: NagiosThresholds) -> str:
    items = [f"{phase.phase.value}={_number(phase.duration_seconds)}s;;;0" for phase in result.phases]
    warning = "" if thresholds.warning is None else _number(thresholds.warning)
    critical = "" if thresholds.critical is None else _number(thresholds.critical)
    items.append(f"time={_number(result.duration_seconds)}s;{warning};{critical};0")
    return " ".join(items)


def _certificate(result: ProbeResult, thresholds: NagiosThresholds, now: float) -> tuple[NagiosState, str]:
    """The certificate's part of the status line and the state it calls for."""
    tls = result.tls
    not_after = None if tls is None else tls.earliest_not_after_timestamp
    if not_after is None:
        if thresholds.checks_certificate:
            return NagiosState.CRITICAL, "no certificate to check (no TLS)"
        return NagiosState.OK, ""
    left = not_after - now
    days = math.floor(left / DAY)
    text = f"certificate valid {days} days" if left >= 0 else f"certificate expired {-days} days ago"
    state = NagiosState.OK
    if thresholds.cert_critical is not None and left < thresholds.cert_critical:
        state, text = (
            NagiosState.CRITICAL,
            f"{text} (critical under {format_duration(thresholds.cert_critical)})",
        )
    elif thresholds.cert_warning is not None and left < thresholds.cert_warning:
        state, text = (
            NagiosState.WARNING,
            f"{text} (warning under {format_duration(thresholds.cert_warning)})",
        )
    if tls is not None and not tls.verified:
        text += f", NOT verified ({tls.verify_error or 'verification off'})"
    return state, text


def nagios_report(result: ProbeResult, thresholds: NagiosThresholds, now: float) -> tuple[NagiosState, str]:
    """The state and the plugin output line (status text `|` perfdata) of `result` at `now`."""
    target = result.target
    address = result.address
    if address is not None and address.ip != target.rsplit(":", 1)[0].strip("[]") and address.ip != target:
        ip = f"[{address.ip}]" if ":" in address.ip else address.ip
        target = f"{target} ({ip}:{address.port})"  # a name: the address it was reached at
    duration = f"{result.duration_seconds:.3f}s"
    failure = result.failure
    if failure is not None:
        state = NagiosState.CRITICAL
        parts = [
            f"{target} failed in {duration} at phase {failure.phase.value} ({failure.reason.value}): "
            f"{failure.message}"
        ]
    else:
        state = NagiosState.OK
        over = ""
        if thresholds.critical is not None and result.duration_seconds > thresholds.critical:
            state, over = NagiosState.CRITICAL, f" (critical over {format_duration(thresholds.critical)})"
        elif thresholds.warning is not None and result.duration_seconds > thresholds.warning:
            state, over = NagiosState.WARNING, f" (warning over {format_duration(thresholds.warning)})"
        parts = [f"{target} answered in {duration}{over}"]
    if result.tls is not None:
        parts.append(result.tls.version)
    cert_state, cert_text = _certificate(result, thresholds, now)
    if cert_text:
        parts.append(cert_text)
    state = max(state, cert_state)
    return state, f"SMTP {state.name} - {_plain(', '.join(parts))}|{_perfdata(result, thresholds)}"
