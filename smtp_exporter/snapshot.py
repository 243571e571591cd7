"""The runtime snapshot: a config compiled once, into what the scheduler, /probe and the
`probe` command run with.

`compile_snapshot` takes what the loader validated and built (`config.loader.LoadedConfig`)
and adds the probe side of each module (`probe.module.CompiledModule`: its SSL context, its
secrets, its DNS client). A reload builds a whole new `Snapshot` and swaps it in, or fails
and leaves the running one in place; nothing in a snapshot changes after it is built, and
nothing on the probe path parses config or reads a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smtp_exporter.config.allowlist import TargetAllowlist
from smtp_exporter.config.errors import raise_errors
from smtp_exporter.config.loader import LoadedConfig, default_loaded, load
from smtp_exporter.config.schema import Config, TargetConfig
from smtp_exporter.config.target_files import TargetFiles
from smtp_exporter.probe.module import CompiledModule, compile_modules
from smtp_exporter.targets import Target


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    """A configured target: its config entry, parsed target and compiled module."""

    config: TargetConfig
    target: Target
    module: CompiledModule


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    config: Config  # as validated: what GET /config renders
    modules: Mapping[str, CompiledModule]  # every module by name, built-ins included
    targets: tuple[CompiledTarget, ...]  # config.targets, then those of target_files, in order (all shards)
    allowlist: TargetAllowlist  # http_probe.allowed_targets, compiled
    files: tuple[str, ...]  # the certificate, key, CA and password files the modules name
    target_files: TargetFiles  # the files target_files found, which loaded, their texts in force


def compile_snapshot(loaded: LoadedConfig) -> Snapshot:
    config = loaded.config
    modules = compile_modules(config.modules, loaded.client_contexts)
    return Snapshot(
        config=config,
        modules=modules,
        targets=tuple(
            CompiledTarget(entry, target, modules[entry.module])
            for entry, target in (
                *zip(config.targets, loaded.targets, strict=True),
                *loaded.target_files.entries,
            )
        ),
        allowlist=loaded.allowlist,
        files=loaded.files,
        target_files=loaded.target_files,
    )


def load_snapshot(path: str | None) -> Snapshot:
    """The snapshot of the config file at `path`, or of the embedded default config; ConfigError
    (a broken target file included: what runs once is run with every file loaded)."""
    snapshot = compile_snapshot(load(path) if path else default_loaded())
    raise_errors(snapshot.target_files.errors)
    return snapshot
