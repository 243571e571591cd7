"""Load and validate the config file, building at the same time what the probes run with.

`load_config` reads the file into YAML nodes (`config.yaml_source`), walks them section by
section (`config.modules`, `config.sections`) and returns a `LoadedConfig`: the validated
`Config` (frozen dataclasses; defaults from `config.schema` only), each target's parsed
`Target`, each TLS-using module's SSL context with its files loaded, the compiled /probe
allowlist, and the files the config names (watched for changes). Every error is one line:

    /etc/smtp.yml:12: modules.foo.timeout: invalid duration "10x": ...

Nothing here touches the network (`ehlo: null` means "this host's FQDN", found once by the
prober, not here).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import yaml

from smtp_exporter.config.allowlist import TargetAllowlist
from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.durations import quote_value
from smtp_exporter.config.errors import ConfigError, raise_errors
from smtp_exporter.config.files import load_client_context
from smtp_exporter.config.modules import MAX_TIMEOUT, ModulesDocument, parse_modules, tls_configs
from smtp_exporter.config.nodes import (
    EMPTY,
    Check,
    Parser,
    checked,
    is_null,
    kind,
    pairs,
    section,
    sequence,
    suggest,
)
from smtp_exporter.config.render import effective_config_yaml
from smtp_exporter.config.schema import (
    Config,
    DefaultsConfig,
    HttpProbeConfig,
    MetricsConfig,
    SchedulerConfig,
    ShardConfig,
    TargetConfig,
    TLSConfig,
)
from smtp_exporter.config.sections import (
    HTTP_PROBE,
    METRICS,
    SCHEDULER,
    SHARD,
    check_shard,
    parse_defaults,
    parse_targets,
    target_key,
)
from smtp_exporter.config.target_files import TargetFiles, load_target_files, pattern
from smtp_exporter.config.yaml_source import MAX_TARGETS, compose_yaml, read_text
from smtp_exporter.targets import Target

__all__ = [
    "MAX_TIMEOUT",
    "ConfigError",
    "LoadedConfig",
    "default_config",
    "effective_config_yaml",
    "load",
    "load_config",
    "load_config_text",
    "load_text",
]

MAX_CONFIG_BYTES = 64 << 20  # 100,000 targets with labels fit in a fraction of it

# The config used when no --config.file is given: a sidecar next to a local mail server.
DEFAULT_CONFIG_TEXT = """\
targets:
  - target: localhost:25
    module: smtp_handshake
    interval: 30s
"""

_S = TypeVar("_S")

_TOP_LEVEL = ("modules", "defaults", "targets", "target_files", "scheduler", "metrics", "http_probe", "shard")
assert set(_TOP_LEVEL) == {field.name for field in dataclasses.fields(Config)} - {"source"}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedConfig:
    """A validated config and what validating it built."""

    config: Config
    targets: tuple[Target, ...]  # config.targets[i], parsed
    client_contexts: Mapping[TLSConfig, ssl.SSLContext]  # every tls_config a module uses (SMTP, IMAP)
    allowlist: TargetAllowlist  # config.http_probe.allowed_targets, parsed
    files: tuple[str, ...]  # the certificate, key, CA and password files it names
    # The targets of target_files, and which files loaded; their errors do not fail the load.
    target_files: TargetFiles = field(default_factory=TargetFiles)


def load(path: str, previous: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate the config file at `path`; relative paths in it are relative to its
    directory. `previous`: the text in force of each target file, kept for a file now broken."""
    text = read_text(path, "config file", MAX_CONFIG_BYTES)
    return load_text(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)), previous=previous)


def load_text(
    text: str, *, source: str, base_dir: str | None = None, previous: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Validate config `text`; `source` names it in errors, `base_dir` anchors relative file
    paths (and target_files globs). Errors of the config raise, together with those of the
    target files; errors of target files alone are in the result's `target_files.errors`."""
    doc = ModulesDocument(source, base_dir)
    root = compose_yaml(text, source)
    if root is not None and not isinstance(root, yaml.MappingNode):
        doc.fail(
            root, "", f"the top level must be a mapping of sections (modules, targets, ...), not {kind(root)}"
        )
    sections: dict[str, yaml.Node] = {}
    for key, key_node, value in pairs(doc, root, "") if root is not None else ():
        # An unknown section is one error among others: the known ones are still read.
        if key not in _TOP_LEVEL:
            doc.errors.append(
                doc.error(key_node, "", f"unknown key {quote_value(key)}{suggest(key, _TOP_LEVEL)}")
            )
        elif not is_null(value):
            sections[key] = value
    modules = (
        parse_modules(doc, sections["modules"], "modules") if "modules" in sections else dict(BUILTIN_MODULES)
    )
    defaults, defaults_ok = DefaultsConfig(), True
    if "defaults" in sections:
        defaults, defaults_ok = checked(
            doc, defaults, parse_defaults, doc, sections["defaults"], "defaults", modules
        )
    no_targets: tuple[tuple[TargetConfig, ...], tuple[Target, ...]] = ((), ())
    targets, parsed = no_targets
    if "targets" in sections:
        (targets, parsed), _ = checked(
            doc,
            no_targets,
            parse_targets,
            doc,
            sections["targets"],
            "targets",
            modules,
            defaults,
            broken=doc.broken_modules,
            defaults_ok=defaults_ok,
        )

    patterns: tuple[str, ...] = ()
    if "target_files" in sections:
        patterns, _ = checked(doc, (), _patterns, doc, sections["target_files"], "target_files")
    taken = {
        target_key(modules[entry.module], parsed_target, entry.module): f"{source}:{entry.line}"
        for entry, parsed_target in zip(targets, parsed, strict=True)
    }
    target_files = load_target_files(
        tuple(doc.path(item) for item in patterns),
        modules,
        defaults,
        taken,
        previous=previous or {},
        budget=(MAX_TARGETS - len(targets), MAX_CONFIG_BYTES),
        broken=doc.broken_modules,
        defaults_ok=defaults_ok,
    )

    def read(name: str, default: _S, parsers: Mapping[str, Parser], check: Check[_S] | None = None) -> _S:
        node = sections.get(name, EMPTY)
        return checked(doc, default, section, doc, node, name, default, parsers, check)[0]

    config = Config(
        modules=modules,
        targets=targets,
        target_files=patterns,
        defaults=defaults,
        scheduler=read("scheduler", SchedulerConfig(), SCHEDULER),
        metrics=read("metrics", MetricsConfig(), METRICS),
        http_probe=read("http_probe", HttpProbeConfig(), HTTP_PROBE),
        shard=read("shard", ShardConfig(), SHARD, check_shard),
        source=source,
    )
    contexts = doc.client_contexts
    for name, module in modules.items():
        for tls in () if name in doc.broken_modules else tls_configs(module):
            if tls in contexts:
                continue
            # no tls_config: the defaults
            context, _ = checked(doc, None, load_client_context, doc, tls, {}, "")
            if context is not None:
                contexts[tls] = context
    if doc.errors:
        doc.errors.sort(key=lambda error: error.line or 0)
        raise_errors([*doc.errors, *target_files.errors])
    return LoadedConfig(
        config=config,
        targets=parsed,
        client_contexts={tls: contexts[tls] for module in modules.values() for tls in tls_configs(module)},
        allowlist=TargetAllowlist(config.http_probe.allowed_targets),
        files=tuple(doc.files),
        target_files=target_files,
    )


def _patterns(doc: ModulesDocument, node: yaml.Node, path: str) -> tuple[str, ...]:
    return tuple(pattern(doc, item, item_path) for item_path, item in sequence(doc, node, path, single=True))


def load_config(path: str) -> Config:
    """The validated `Config` of the file at `path` (see `load`)."""
    return load(path).config


def load_config_text(text: str, *, source: str, base_dir: str | None = None) -> Config:
    """The validated `Config` of `text` (see `load_text`)."""
    return load_text(text, source=source, base_dir=base_dir).config


def default_loaded() -> LoadedConfig:
    """The embedded config: the built-in modules and `localhost:25` probed every 30s."""
    return load_text(DEFAULT_CONFIG_TEXT, source="<built-in>")


def default_config() -> Config:
    return default_loaded().config
