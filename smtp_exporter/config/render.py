"""The effective config (GET /config): what is in force, defaults included, secrets hidden."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from smtp_exporter.config.durations import format_duration
from smtp_exporter.config.schema import Config, Secret

_DURATION_FIELDS = frozenset(
    {
        "timeout",
        "connect_timeout",
        "happy_eyeballs_delay",
        "interval",
        "shutdown_grace_period",
        "poll_interval",
    }
)
_MAPPING_FIELDS = frozenset({"labels", "headers"})


def effective_config_yaml(config: Config) -> str:
    """The config in effect, as YAML: every module with its defaults, secrets shown as `<secret>`."""
    document = {
        "modules": {name: _plain(module) for name, module in config.modules.items()},
        "defaults": _plain(config.defaults),
        "targets": [_plain(target) for target in config.targets],
        "target_files": list(config.target_files),  # the globs: their targets are not repeated here
        "scheduler": _plain(config.scheduler),
        "metrics": _plain(config.metrics),
        "http_probe": _plain(config.http_probe),
        "shard": _plain(config.shard),
    }
    return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False))


def _plain(value: Any, name: str = "") -> Any:
    """`value` as plain YAML data (dicts, lists, str, numbers), with durations spelled as in the file."""
    if isinstance(value, Secret):
        return "<secret>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result = {}
        for field in dataclasses.fields(value):
            if field.name == "line":
                continue
            result[field.name] = _plain(getattr(value, field.name), field.name)
        return result
    if name in _DURATION_FIELDS and isinstance(value, float):
        return format_duration(value)
    if name in _MAPPING_FIELDS:
        return {key: item for key, item in value}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str):  # enums included
        return str(value.value) if hasattr(value, "value") else str(value)
    return value
