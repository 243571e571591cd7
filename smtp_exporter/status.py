"""What the status page reads about each scheduled target."""

from __future__ import annotations

from dataclasses import dataclass

from smtp_exporter.config.schema import TargetConfig
from smtp_exporter.metrics import SeriesState
from smtp_exporter.targets import Target


@dataclass(frozen=True, slots=True)
class TargetStatus:
    config: TargetConfig
    target: Target  # as parsed at load: what the page checks against /probe's allowlist
    in_flight: bool
    next_probe_timestamp: float  # wall clock, when its next probe is due
    series: tuple[SeriesState, ...]  # one (or one per MX host in mx_mode each); empty before a result
