"""The sections besides `modules`: defaults, targets, scheduler, metrics, http_probe, shard.

Each is a table of key -> parser (`config.nodes.section`), with a post-validation hook where
keys are checked against each other. The targets are parsed here, once: the loader keeps
each one's `Target` for the probes.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Collection, Mapping

import yaml

from smtp_exporter.config.allowlist import parse_allow_entry
from smtp_exporter.config.durations import format_duration, quote_value
from smtp_exporter.config.nodes import (
    BOOL_TAG,
    Document,
    Parser,
    boolean,
    checked,
    choice,
    duration,
    duration_upto,
    fields,
    integer_in,
    join,
    kind,
    line_of,
    pairs,
    scalar,
    section,
    sequence,
    string,
    suggest,
)
from smtp_exporter.config.schema import (
    DefaultsConfig,
    ModuleConfig,
    MXMode,
    ShardConfig,
    TargetConfig,
)
from smtp_exporter.config.yaml_source import MAX_TARGETS
from smtp_exporter.targets import Target, TargetError, parse_target

MAX_INTERVAL = 86400.0
MAX_GRACE_PERIOD = 3600.0
MAX_CONCURRENCY = 100_000
MAX_BUCKETS = 100
MAX_HISTORY = 100_000

# Labels the exporter sets itself (and the ones Prometheus adds): a target label with one of
# these names would collide with them.
RESERVED_LABELS = frozenset(
    {
        "target",
        "module",
        "mx_host",
        "ip_protocol",
        "phase",
        "reason",
        "status",
        "version",
        "cipher",
        "subject",
        "issuer",
        "fingerprint_sha256",
        "extension",
        "preference",
        "le",
        "quantile",
        "instance",
        "job",
        "python_version",
    }
)
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def module_name(doc: Document, node: yaml.Node, path: str, modules: Mapping[str, ModuleConfig]) -> str:
    name = string(doc, node, path)
    if name not in modules:
        doc.fail(node, path, f"unknown module {quote_value(name)}{suggest(name, modules)}")
    return name


def parse_defaults(
    doc: Document, node: yaml.Node, path: str, modules: Mapping[str, ModuleConfig]
) -> DefaultsConfig:
    parsers: dict[str, Parser] = {
        "module": lambda doc, node, path: module_name(doc, node, path, modules),
        "interval": duration_upto(MAX_INTERVAL),
    }
    return section(doc, node, path, DefaultsConfig(), parsers)


# --- targets ------------------------------------------------------------------------------------------


def _labels(doc: Document, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
    return label_pairs(doc, pairs(doc, node, path), path)


def label_pairs(
    doc: Document, items: list[tuple[str, yaml.Node, yaml.Node]], path: str
) -> tuple[tuple[str, str], ...]:
    """A target's series labels from the (name, name node, value node) of its labels mapping."""
    labels = []
    for name, name_node, value in items:
        if not _LABEL_NAME_RE.fullmatch(name):
            doc.fail(
                name_node, path, f"invalid label name {quote_value(name)}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if name.startswith("__"):
            doc.fail(
                name_node,
                path,
                f"invalid label name {quote_value(name)}: names starting with __ are reserved",
            )
        if name in RESERVED_LABELS:
            doc.fail(
                name_node, path, f"label {quote_value(name)} clashes with a label the exporter sets itself"
            )
        text = string(doc, value, join(path, name))
        if not text:
            doc.fail(value, join(path, name), "must not be empty (an empty label is no label in Prometheus)")
        # Label names and values repeat across targets: one shared copy of each, outside the tree.
        labels.append((sys.intern(_fresh(name)), sys.intern(_fresh(text))))
    return tuple(labels)


def _fresh(text: str) -> str:
    """A copy of a string the YAML tree holds, for the config to keep. Strings kept from among
    the tree's nodes and marks, which are freed after loading, would pin the allocator's memory
    they share with them (benchmarks/RESULTS.md: memory per target)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")


_TARGET_KEYS = ("target", "module", "interval", "labels", "mx_mode")


def parse_targets(
    doc: Document,
    node: yaml.Node,
    path: str,
    modules: Mapping[str, ModuleConfig],
    defaults: DefaultsConfig,
    *,
    broken: Collection[str] = (),
    defaults_ok: bool = True,
) -> tuple[tuple[TargetConfig, ...], tuple[Target, ...]]:
    """The targets, and each one's parsed `Target` (in the same order). Each target is checked
    on its own: its error is kept in `doc.errors` and the next one is read. A target using a
    module in `broken` (whose error is kept already), or a default when the defaults section
    has an error (`defaults_ok` false), is checked only as far as it does not depend on them."""
    items = sequence(doc, node, path)
    if len(items) > MAX_TARGETS:  # compose_yaml stops most such files sooner; an alias gets here
        doc.fail(node, path, f"too many targets (more than {MAX_TARGETS}: shard them with shard.count)")
    seen: dict[tuple[str, str], int] = {}
    targets = []
    parsed_targets = []
    for item_path, item in items:
        both, _ = checked(
            doc, None, _parse_target, doc, item, item_path, modules, defaults, seen, broken, defaults_ok
        )
        if both is not None:
            targets.append(both[0])
            parsed_targets.append(both[1])
    return tuple(targets), tuple(parsed_targets)


def _parse_target(
    doc: Document,
    item: yaml.Node,
    item_path: str,
    modules: Mapping[str, ModuleConfig],
    defaults: DefaultsConfig,
    seen: dict[tuple[str, str], int],
    broken: Collection[str],
    defaults_ok: bool,
) -> tuple[TargetConfig, Target] | None:
    """One target of the config file and its parsed `Target`; None when it is not checked
    further (see above)."""
    if not isinstance(item, yaml.MappingNode):
        doc.fail(item, item_path, f"must be a mapping with a target key, not {kind(item)}")
    entry = {key: (key_node, value) for key, key_node, value in fields(doc, item, item_path, _TARGET_KEYS)}
    if "target" not in entry:
        doc.fail(item, item_path, 'missing required key "target"')

    def setting(key: str) -> tuple[yaml.Node, str] | None:
        return (entry[key][1], join(item_path, key)) if key in entry else None

    labels = setting("labels")
    return build_target(
        doc,
        item,
        item_path,
        (entry["target"][1], join(item_path, "target")),
        modules,
        defaults,
        seen,
        broken=broken,
        defaults_ok=defaults_ok,
        module=setting("module"),
        interval=setting("interval"),
        mx_mode=setting("mx_mode"),
        labels=lambda: _labels(doc, *labels) if labels is not None else (),
    )


Setting = tuple[yaml.Node, str]  # a value's node and its key path


def build_target(
    doc: Document,
    item: yaml.Node,
    item_path: str,
    target: Setting,
    modules: Mapping[str, ModuleConfig],
    defaults: DefaultsConfig,
    seen: dict[tuple[str, str], int],
    *,
    broken: Collection[str],
    defaults_ok: bool,
    module: Setting | None,
    interval: Setting | None,
    mx_mode: Setting | None,
    labels: Callable[[], tuple[tuple[str, str], ...]],
) -> tuple[TargetConfig, Target] | None:
    """A target from what its entry sets (in the config file, or a group of a target file):
    unset settings take the defaults; `item` is the entry, for its line. None when it is not
    checked further (its module is in `broken`, or it needs defaults that are not `defaults_ok`)."""
    name = defaults.module
    if module is not None:
        name = module_name(doc, *module, modules)
    elif not defaults_ok:
        return None
    if name in broken:
        return None
    config = modules[name]
    target_node, target_path = target
    text = string(doc, target_node, target_path).strip()
    try:
        parsed = parse_target(text, config.port)
    except TargetError as exc:
        doc.fail(target_node, target_path, str(exc))
    if config.mx and (parsed.family is not None or ":" in text):
        doc.fail(
            target_node,
            target_path,
            f"module {quote_value(name)} has mx: true, so the target must be a mail domain "
            f"without port, not {quote_value(text)}",
        )
    key = target_key(config, parsed, name)
    if key in seen:
        doc.fail(
            item,
            item_path,
            f"duplicate target {quote_value(text)} with module {quote_value(name)} (also at line {seen[key]})",
        )
    seen[key] = line_of(item)
    seconds = defaults.interval
    if interval is not None:
        seconds = duration(doc, *interval, MAX_INTERVAL)
    if config.total_timeout >= seconds and (interval is not None or defaults_ok):
        timeout = format_duration(config.timeout)
        if config.delivery is not None:
            timeout += f" plus the delivery.timeout {format_duration(config.delivery.timeout)}"
        doc.fail(
            item,
            item_path,
            f"the timeout {timeout} of module {quote_value(name)} must be "
            f"shorter than the interval {format_duration(seconds)}",
        )
    mode = MXMode.PRIMARY
    if mx_mode is not None:
        mode_node, mode_path = mx_mode
        mode = choice(doc, mode_node, mode_path, list(MXMode))
        if mode is MXMode.EACH and not config.mx:
            doc.fail(
                mode_node,
                mode_path,
                f"mx_mode: each needs a module with mx: true ({quote_value(name)} has mx: false)",
            )
    kept_text = _fresh(text)
    entry = TargetConfig(
        target=kept_text,
        module=sys.intern(name),
        interval=seconds,
        labels=labels(),
        mx_mode=mode,
        line=line_of(item),
    )
    # The parsed host shares the kept text when they are equal (a host without port).
    return entry, parsed._replace(host=kept_text) if parsed.host == text else parsed


def target_key(module: ModuleConfig, parsed: Target, name: str) -> tuple[str, str]:
    """What two targets may not share: the mail domain (mx modules) or host:port, and the module."""
    return (parsed.host if module.mx else str(parsed), name)


# --- scheduler, metrics, http_probe, shard ------------------------------------------------------------


def _buckets(doc: Document, node: yaml.Node, path: str) -> tuple[float, ...]:
    items = sequence(doc, node, path)
    if not items:
        doc.fail(node, path, "must not be empty")
    if len(items) > MAX_BUCKETS:
        doc.fail(node, path, f"at most {MAX_BUCKETS} buckets (each is a series per target)")
    buckets: list[float] = []
    for item_path, item in items:
        text = str(scalar(doc, item, item_path, "a number").value)
        try:
            if item.tag == BOOL_TAG:
                raise ValueError(text)
            bound = float(text.replace("_", ""))
        except ValueError:
            doc.fail(item, item_path, f"must be a number of seconds, not {quote_value(text)}")
        if not math.isfinite(bound) or bound <= 0:
            doc.fail(item, item_path, f"must be a positive number of seconds, not {text}")
        if buckets and bound <= buckets[-1]:
            doc.fail(item, item_path, f"buckets must be in increasing order ({text} after {buckets[-1]:g})")
        buckets.append(bound)
    return tuple(buckets)


def _allowed_targets(doc: Document, node: yaml.Node, path: str) -> tuple[str, ...]:
    entries = []
    for item_path, item in sequence(doc, node, path, single=True):
        text = string(doc, item, item_path)
        try:
            parse_allow_entry(text)
        except ValueError as exc:
            doc.fail(item, item_path, str(exc))
        entries.append(text.strip())
    return tuple(entries)


SCHEDULER: dict[str, Parser] = {
    "max_concurrency": integer_in(1, MAX_CONCURRENCY),
    "shutdown_grace_period": duration_upto(MAX_GRACE_PERIOD, allow_zero=True),
}
METRICS: dict[str, Parser] = {
    "histogram_buckets": _buckets,
    "phase_histograms": boolean,
    "delivery_histogram_buckets": _buckets,
    "blackbox_names": boolean,
    "history_limit": integer_in(0, MAX_HISTORY),
}
HTTP_PROBE: dict[str, Parser] = {
    "allowed_targets": _allowed_targets,
    "max_concurrent": integer_in(1, MAX_CONCURRENCY),
}
SHARD: dict[str, Parser] = {
    "count": integer_in(1, MAX_CONCURRENCY),
    "index": integer_in(0, MAX_CONCURRENCY),
}


def check_shard(doc: Document, shard: ShardConfig, keys: dict[str, yaml.Node], path: str) -> None:
    if shard.index >= shard.count:
        doc.fail(
            keys["index"], "shard.index", f"must be less than shard.count ({shard.count}), not {shard.index}"
        )
