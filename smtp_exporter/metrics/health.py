"""The exporter's own metrics: build, config reloads, scheduler load, event-loop lag, /probe requests.

They are few, so they go through prometheus_client (with the process and Python collectors);
the state lives in one mutable `ExporterStats` that the scheduler and the web server update.
"""

from __future__ import annotations

import platform
import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _generate_openmetrics
from prometheus_client.registry import Collector

from smtp_exporter import __version__

generate_openmetrics: Callable[[CollectorRegistry], bytes] = _generate_openmetrics

# Event-loop lag: the monitor wakes every LAG_INTERVAL seconds; the max is over LAG_WINDOW seconds.
LAG_INTERVAL = 0.1
LAG_WINDOW = 60.0


class ExporterStats:
    """Mutable health counters and gauges of one exporter process (one event loop, no locking)."""

    def __init__(self) -> None:
        self.config_reload_successful = False
        self.config_reload_success_timestamp = 0.0
        # The web config in force was loaded at start (or the exporter would not have started).
        self.web_config_reload_successful = True
        # Each file target_files found at the latest load: whether it loaded as it is (True) or
        # is broken, its previous contents running (False).
        self.target_files: tuple[tuple[str, bool], ...] = ()
        self.targets = 0
        self.probes_in_flight = 0
        self.probes_waiting = 0
        self.probes_waited_total = 0
        self.probes_skipped_total = 0
        self.loop_lag_seconds = 0.0
        self._lag_window: deque[float] = deque(maxlen=int(LAG_WINDOW / LAG_INTERVAL))
        # (module, HTTP code) -> count. Unknown module names are counted under module="" so
        # that requests cannot create series at will.
        self.probe_requests: dict[tuple[str, str], int] = {}

    def reload_succeeded(self) -> None:
        self.config_reload_successful = True
        self.config_reload_success_timestamp = time.time()

    def reload_failed(self) -> None:
        self.config_reload_successful = False

    def record_lag(self, lag: float) -> None:
        self.loop_lag_seconds = lag
        self._lag_window.append(lag)

    @property
    def max_loop_lag_seconds(self) -> float:
        return max(self._lag_window, default=0.0)

    def count_probe_request(self, module: str, code: int) -> None:
        key = (module, str(code))
        self.probe_requests[key] = self.probe_requests.get(key, 0) + 1


class _StatsCollector(Collector):
    def __init__(self, stats: ExporterStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        info = InfoMetricFamily(
            "smtp_exporter_build",
            "Version of smtp-exporter and of the Python running it.",
            labels=("version", "python_version"),
        )
        info.add_metric((__version__, platform.python_version()), {})
        yield info

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge(
            "smtp_exporter_config_last_reload_successful",
            "Whether the latest config load or reload succeeded (1) or failed (0).",
            1.0 if stats.config_reload_successful else 0.0,
        )
        yield gauge(
            "smtp_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the latest successful config load or reload.",
            stats.config_reload_success_timestamp,
        )
        yield gauge(
            "smtp_exporter_web_config_last_reload_successful",
            "Whether the latest reload of the web config file, or of a certificate, key or client CA "
            "file it names, succeeded (1) or failed (0).",
            1.0 if stats.web_config_reload_successful else 0.0,
        )
        files = GaugeMetricFamily(
            "smtp_exporter_target_file_last_load_successful",
            "Whether the latest load of each file target_files found succeeded (1) or failed (0: "
            "its previous contents keep running).",
            labels=("file",),
        )
        for name, ok in stats.target_files:
            files.add_metric((name,), 1.0 if ok else 0.0)
        yield files
        yield gauge(
            "smtp_exporter_targets",
            "Scheduled series (targets, or MX hosts in mx_mode each) probed by this process.",
            stats.targets,
        )
        yield gauge(
            "smtp_exporter_probes_in_flight",
            "Probes running now (scheduled and /probe).",
            stats.probes_in_flight,
        )
        yield gauge(
            "smtp_exporter_probes_waiting",
            "Scheduled probes waiting for a concurrency slot.",
            stats.probes_waiting,
        )
        yield CounterMetricFamily(
            "smtp_exporter_probes_waited",
            "Scheduled probes that had to wait for a concurrency slot.",
            value=stats.probes_waited_total,
        )
        yield CounterMetricFamily(
            "smtp_exporter_probes_skipped",
            "Scheduled probes skipped because the target's previous probe was still running.",
            value=stats.probes_skipped_total,
        )
        yield gauge(
            "smtp_exporter_event_loop_lag_seconds",
            "How late the event loop ran a timer at its latest check (every 100ms): probe timings "
            "carry this error.",
            stats.loop_lag_seconds,
        )
        yield gauge(
            "smtp_exporter_event_loop_lag_max_seconds",
            "Largest event-loop lag seen over the last 60 seconds.",
            stats.max_loop_lag_seconds,
        )
        requests = CounterMetricFamily(
            "smtp_exporter_probe_requests",
            "Requests to /probe, by module and HTTP status code.",
            labels=("module", "code"),
        )
        for (module, code), count in stats.probe_requests.items():
            requests.add_metric((module, code), count)
        yield requests


class HealthMetrics:
    """A registry of the process, Python and exporter metrics, rendered for a scrape."""

    def __init__(self, stats: ExporterStats) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_StatsCollector(stats))

    def render(self, *, openmetrics: bool) -> bytes:
        """The registry's families; for OpenMetrics without the `# EOF` (the caller ends the body)."""
        if openmetrics:
            return generate_openmetrics(self.registry).removesuffix(b"# EOF\n")
        return generate_latest(self.registry)
