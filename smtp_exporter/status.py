"""What the status page reads about each scheduled target."""

from __future__ import annotations

from dataclasses import dataclass

from smtp_exporter.config.schema import TargetConfig
from smtp_exporter.metrics import SeriesState


@dataclass(frozen=True, slots=True)
class TargetStatus:
    config: TargetConfig
    in_flight: bool
    series: tuple[SeriesState, ...]  # one (or one per MX host in mx_mode each); empty before a result
