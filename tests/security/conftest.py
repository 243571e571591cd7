"""The service tests' fixtures, reused: the exporter in-process (`write_config`) and as a subprocess."""

from tests.service.conftest import exporter_process, write_config

__all__ = ["exporter_process", "write_config"]
