"""From a config file to its YAML node tree, within bounds, with errors in the config's terms.

The text is composed into nodes, never constructed into Python objects: the sections walk
the nodes (`config.nodes`), so that every error can name the line it is about. Before any
node is built, one pass over libyaml's events refuses what would be costly or fatal to
build.
"""

from __future__ import annotations

from typing import Any

import yaml

from smtp_exporter.config.errors import ConfigError

MAX_TARGETS = 100_000
MAX_NESTING = 64  # a config nests 5 levels deep; libyaml's composer recurses without a limit

# libyaml is several times faster on large target lists; both report the same marks.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(path: str, what: str, limit: int | None = None) -> str:
    """The UTF-8 text of the file at `path` (`what` names it in errors), at most `limit` bytes."""
    try:
        with open(path, "rb") as file:
            data = file.read() if limit is None else file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    if limit is not None and len(data) > limit:
        raise ConfigError(path, f"{what} larger than {limit >> 20} MiB: shard it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(path, "invalid YAML: not valid UTF-8", line=line) from None


def _check_shape(text: str, source: str, count_targets: bool) -> None:
    """Refuse, before building any node, what would be costly or fatal to build: nesting deeper
    than MAX_NESTING (libyaml's C composer recurses once per level, and a few tens of thousands
    of `[` crash the process; its event parser does not recurse) and more than MAX_TARGETS
    targets (a reload runs beside the probes: stop before the tree of a huge file exists)."""
    depth = 0
    top_key: str | None = None
    expect_key = True
    in_targets = False
    targets = 0
    targets_line: int | None = None
    for event in yaml.parse(text, Loader=_Loader):
        node_event = isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent))
        if node_event and depth == 1:  # a key or a value of the top-level mapping
            if expect_key:
                top_key = event.value if isinstance(event, yaml.ScalarEvent) else None
            else:
                in_targets = top_key == "targets" and isinstance(event, yaml.SequenceStartEvent)
                targets_line = _line(event)
            expect_key = not expect_key
        elif node_event and depth == 2 and in_targets and count_targets:
            targets += 1
            if targets > MAX_TARGETS:
                raise ConfigError(
                    source,
                    f"too many targets (more than {MAX_TARGETS}: shard them with shard.count)",
                    line=targets_line,
                    path="targets",
                )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(
                    source, f"invalid YAML: nested more than {MAX_NESTING} levels deep", line=_line(event)
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            if depth == 1:
                in_targets = False


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark else None


def compose_yaml(text: str, source: str, *, count_targets: bool = True) -> yaml.Node | None:
    """The node tree of a one-document YAML text, or None when it is empty. `count_targets`
    false: not a config file (a target file: its loader counts the targets)."""
    try:
        _check_shape(text, source, count_targets)
        node: yaml.Node | None = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "syntax error"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        raise ConfigError(source, f"invalid YAML: {problem}", line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        raise ConfigError(
            source, f"invalid YAML: unacceptable character #x{char:04x}: {exc.reason}", line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, "invalid YAML: nested too deeply") from None
    return node
