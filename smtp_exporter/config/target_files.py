"""`target_files`: targets listed in other files, in Prometheus' `file_sd` format.

Each file is a list of groups, `{targets: [...], labels: {...}}`, in YAML or JSON (JSON is
read as the YAML it is, so that errors name lines alike). A group's reserved labels
`__module__` and `__interval__` set its targets' module and interval (else the `defaults`);
its other labels are the targets' series labels. Each file is loaded on its own: a file with
an error is reported (`FILE:LINE: key.path: message`) and the contents it had at the
previous load, read again against the config in force, keep running, while the other files
load. A target may not be listed twice, in one file, in two, or in a file and the config.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import yaml

from smtp_exporter.config.durations import quote_value
from smtp_exporter.config.errors import ConfigError
from smtp_exporter.config.nodes import (
    Document,
    checked,
    duration,
    fields,
    is_null,
    join,
    kind,
    pairs,
    sequence,
    string,
)
from smtp_exporter.config.schema import DefaultsConfig, ModuleConfig, TargetConfig
from smtp_exporter.config.sections import (
    MAX_INTERVAL,
    Setting,
    build_target,
    label_pairs,
    module_name,
    target_key,
)
from smtp_exporter.config.yaml_source import MAX_TARGETS, compose_yaml, read_text
from smtp_exporter.targets import Target

# The group labels that are settings, not series labels.
MODULE_LABEL = "__module__"
INTERVAL_LABEL = "__interval__"
_GROUP_KEYS = ("targets", "labels")
_SUFFIXES = (".yml", ".yaml", ".json")  # as Prometheus' file_sd_configs requires

Entry = tuple[TargetConfig, Target]
Key = tuple[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetFiles:
    """What a load made of `target_files`."""

    patterns: tuple[str, ...] = ()  # the globs, relative ones anchored at the config's directory
    entries: tuple[Entry, ...] = ()  # the targets in force, by file, in file order
    loaded: tuple[tuple[str, bool], ...] = ()  # each file the globs found: loaded as it is now (True)
    texts: Mapping[str, str] = field(default_factory=dict)  # the text in force of each file
    errors: tuple[ConfigError, ...] = ()  # of the files not loaded as they are now


def pattern(doc: Document, node: yaml.Node, path: str) -> str:
    """One `target_files` glob, as written (checked: a YAML or JSON file name pattern)."""
    text = string(doc, node, path)
    if not text.endswith(_SUFFIXES):
        doc.fail(node, path, f"{quote_value(text)} must end in .yml, .yaml or .json")
    return text


def expand(patterns: Collection[str]) -> list[str]:
    """The files the (anchored) globs find now, sorted, each once: the path as the glob found it."""
    found: dict[str, None] = {}
    for item in patterns:
        for name in sorted(glob.glob(item)):
            found.setdefault(name, None)
    return list(found)


def load_target_files(
    patterns: tuple[str, ...],
    modules: Mapping[str, ModuleConfig],
    defaults: DefaultsConfig,
    taken: Mapping[Key, str],
    *,
    previous: Mapping[str, str],
    budget: tuple[int, int],
    broken: Collection[str] = (),
    defaults_ok: bool = True,
) -> TargetFiles:
    """Load the files `patterns` find. `taken`: the config file's targets, by key, with where
    they stand (`file:line`); `previous`: each file's text in force; `budget`: the targets and
    the bytes (read bounded, as the config file is) all target files may hold together."""
    targets_left, max_bytes = budget
    bytes_left = max_bytes
    files = expand(patterns)
    current: dict[str, tuple[str, list[Entry]] | list[ConfigError]] = {}
    for name in files:
        try:
            text = read_text(name, "target file", bytes_left)
        except ConfigError as exc:
            if bytes_left < max_bytes and exc.message.startswith("target file larger than"):
                exc = ConfigError(
                    name, f"the target files together are larger than {max_bytes >> 20} MiB: shard them"
                )
            current[name] = [exc]
            continue
        bytes_left -= len(text.encode("utf-8", "surrogatepass"))
        parsed, problems = _parse_file(name, text, modules, defaults, broken, defaults_ok)
        current[name] = problems or (text, parsed)

    seen = dict(taken)
    entries: dict[str, list[Entry]] = {}
    texts: dict[str, str] = {}
    errors: list[ConfigError] = []

    def admit(name: str, text: str, parsed: list[Entry]) -> list[ConfigError]:
        """Take a file's targets if none is listed before and they fit the budget; else its errors."""
        nonlocal targets_left
        problems = _clashes(name, parsed, modules, seen)
        if not problems and len(parsed) > targets_left:
            problems = [
                ConfigError(
                    name,
                    f"too many targets with the other files and the config (more than {MAX_TARGETS}: "
                    "shard them with shard.count)",
                )
            ]
        if problems:
            return problems
        for entry, target in parsed:
            seen[target_key(modules[entry.module], target, entry.module)] = f"{name}:{entry.line}"
        targets_left -= len(parsed)
        entries[name], texts[name] = parsed, text
        return []

    def keep_previous(name: str) -> None:
        """A broken file: its previous contents keep running, if they still load."""
        text = previous.get(name)
        if text is not None:
            parsed, problems = _parse_file(name, text, modules, defaults, broken, defaults_ok)
            if not problems:
                admit(name, text, parsed)

    # The contents kept for broken files were running: they keep their targets first.
    for name, result in current.items():
        if isinstance(result, list):
            errors.extend(result)
            keep_previous(name)
    loaded = []
    for name, result in current.items():
        ok = not isinstance(result, list)
        if not isinstance(result, list):
            problems = admit(name, *result)
            if problems:
                errors.extend(problems)
                keep_previous(name)
                ok = False
        loaded.append((name, ok))
    return TargetFiles(
        patterns=patterns,
        entries=tuple(entry for name in files for entry in entries.get(name, ())),
        loaded=tuple(loaded),
        texts=texts,
        errors=tuple(errors),
    )


def _clashes(
    name: str, parsed: list[Entry], modules: Mapping[str, ModuleConfig], seen: Mapping[Key, str]
) -> list[ConfigError]:
    problems = []
    for entry, target in parsed:
        other = seen.get(target_key(modules[entry.module], target, entry.module))
        if other is not None:
            problems.append(
                ConfigError(
                    name,
                    f"duplicate target {quote_value(entry.target)} with module {quote_value(entry.module)} "
                    f"(also at {other})",
                    line=entry.line,
                )
            )
    return problems


def _parse_file(
    name: str,
    text: str,
    modules: Mapping[str, ModuleConfig],
    defaults: DefaultsConfig,
    broken: Collection[str],
    defaults_ok: bool,
) -> tuple[list[Entry], list[ConfigError]]:
    """A file's targets and its errors (every group and target checked)."""
    doc = Document(name, os.path.dirname(name))
    try:
        root = compose_yaml(text, name, count_targets=False)
    except ConfigError as exc:
        return [], [exc]
    if root is None:
        return [], []
    if not isinstance(root, yaml.SequenceNode):
        problem = f"must be a list of groups ({{targets: [...], labels: {{...}}}}), not {kind(root)}"
        return [], [doc.error(root, "", problem)]
    seen: dict[Key, int] = {}
    parsed: list[Entry] = []
    for group_path, group in sequence(doc, root, ""):
        entries, _ = checked(
            doc, [], _parse_group, doc, group, group_path, modules, defaults, seen, broken, defaults_ok
        )
        parsed.extend(entries)
    return parsed, sorted(doc.errors, key=lambda error: error.line or 0)


def _parse_group(
    doc: Document,
    group: yaml.Node,
    path: str,
    modules: Mapping[str, ModuleConfig],
    defaults: DefaultsConfig,
    seen: dict[Key, int],
    broken: Collection[str],
    defaults_ok: bool,
) -> list[Entry]:
    """One group's targets; the group's own errors fail it whole, each target's are its own."""
    if not isinstance(group, yaml.MappingNode):
        doc.fail(group, path, f"must be a mapping with a targets key, not {kind(group)}")
    entry = {key: value for key, _, value in fields(doc, group, path, _GROUP_KEYS)}
    if "targets" not in entry:
        doc.fail(group, path, 'missing required key "targets"')
    labels_path = join(path, "labels")
    settings: dict[str, Setting] = {}
    series = []
    for label, label_node, value in pairs(doc, entry["labels"], labels_path) if "labels" in entry else ():
        if label in (MODULE_LABEL, INTERVAL_LABEL):
            settings[label] = (value, join(labels_path, label))
        else:
            series.append((label, label_node, value))
    labels = label_pairs(doc, series, labels_path)
    module, interval = settings.get(MODULE_LABEL), settings.get(INTERVAL_LABEL)
    # Checked once for the group, not once for each of its targets.
    if module is not None:
        module_name(doc, *module, modules)
    if interval is not None:
        duration(doc, *interval, MAX_INTERVAL)
    result = []
    targets = entry["targets"]
    items = [] if is_null(targets) else sequence(doc, targets, join(path, "targets"))
    for item_path, item in items:
        built, _ = checked(
            doc,
            None,
            build_target,
            doc,
            item,
            item_path,
            (item, item_path),
            modules,
            defaults,
            seen,
            broken=broken,
            defaults_ok=defaults_ok,
            module=module,
            interval=interval,
            mx_mode=None,
            labels=lambda: labels,
        )
        if built is not None:
            result.append(built)
    return result
