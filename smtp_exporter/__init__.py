"""smtp-exporter: a Prometheus exporter that health-checks mail servers phase by phase."""

__version__ = "0.1.0"
