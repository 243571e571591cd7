"""Prometheus metrics of the exporter: probe results rendered once, scrapes that only concatenate."""

from smtp_exporter.metrics.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    OPENMETRICS_EOF,
    TEXT_CONTENT_TYPE,
    Buckets,
    SeriesState,
    render_probe_result,
    wants_openmetrics,
)
from smtp_exporter.metrics.health import ExporterStats, HealthMetrics
from smtp_exporter.metrics.store import MetricsStore

__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "OPENMETRICS_EOF",
    "TEXT_CONTENT_TYPE",
    "Buckets",
    "ExporterStats",
    "HealthMetrics",
    "MetricsStore",
    "SeriesState",
    "render_probe_result",
    "wants_openmetrics",
]
