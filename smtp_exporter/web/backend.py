"""What the HTTP server reads from, and asks of, the running exporter: all of it, in one place.

The service builds one `WebBackend` and hands it to `create_app`; the web layer never sees the
service itself. Values that a reload replaces are read through functions, at each request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from smtp_exporter.config.schema import Config
from smtp_exporter.config.web import WebConfig
from smtp_exporter.history import ResultHistory
from smtp_exporter.metrics import ExporterStats, HealthMetrics, MetricsStore, SeriesState
from smtp_exporter.probe import Prober
from smtp_exporter.snapshot import Snapshot
from smtp_exporter.status import TargetStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class WebBackend:
    snapshot: Callable[[], Snapshot]  # the compiled config in force (modules, targets, allowlist)
    effective_config: Callable[[Config], str]  # /config's YAML of a snapshot (run in a thread)
    web_config: Callable[[], WebConfig]  # TLS, basic auth and headers in force
    watches_web_config: bool  # a web config file is watched: users and headers may appear later
    prober: Prober  # runs /probe's probes
    store: MetricsStore  # the scheduled series, for /metrics
    health: HealthMetrics  # the exporter's own metrics, for /metrics
    stats: ExporterStats  # /probe counts its requests and probes in flight here
    history: ResultHistory  # the newest full results; /probe adds its own
    statuses: Callable[[], Iterable[TargetStatus]]  # the scheduled targets, for the status page
    # (target, module, mx_host, ip_protocol): a scheduled series
    find_series: Callable[[str, str, str | None, int | None], SeriesState | None]
    reload: Callable[[], Awaitable[None]]  # raises ConfigError and keeps the running config
    ready: Callable[[], bool]
