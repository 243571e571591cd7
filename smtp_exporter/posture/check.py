"""What a posture check is: a name and a coroutine from a `CheckInput` to a `CheckReport`.

A new check is a module of this package defining `CHECK = Check("<name>", run)`, where `<name>`
is its key in the `posture` config section (`config.posture.CHECKS`) and its `check` label,
listed in `posture.CHECKS`, with its families in `metrics/posture.py`.
`run` must not raise for what it finds wrong (that is its report); the runner bounds it by the
module's timeout and turns a crash into a report saying so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from smtp_exporter.config.schema import ModuleConfig, PostureConfig
from smtp_exporter.metrics.families import Family
from smtp_exporter.model import CheckReport, PostureSample, ProbeResult
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.pkix import Trust


@dataclass(frozen=True, slots=True)
class CheckInput:
    """Everything a check may use; built once per posture run of a series."""

    domain: str  # the target's host: the mail domain under mx: true
    result: ProbeResult  # the conversation: address, mx, tls, server names, attempts
    module: ModuleConfig
    config: PostureConfig  # the module's posture section
    dns: PostureDNS  # the module's `dns` settings, DO set, answers classified
    previous: CheckReport | None  # this check's last report for the series (e.g. to see a change)
    now: float  # Unix time of this run: the report's `ran_at`
    trust: Trust | None  # MTA-STS's CAs (posture.ca_file or the system's); None without mta_sts


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    run: Callable[[CheckInput], Awaitable[CheckReport]]


def sample(family: Family, labels: str, value: float) -> PostureSample:
    """A report's sample of `family` (one of metrics/posture.py's), `labels` already escaped."""
    return (family.name, labels, value)
