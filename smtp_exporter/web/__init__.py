"""The exporter's HTTP server (aiohttp, on the probes' event loop)."""

from smtp_exporter.web.app import create_app, runner_options, scrape_deadline
from smtp_exporter.web.backend import WebBackend

__all__ = ["WebBackend", "create_app", "runner_options", "scrape_deadline"]
