"""The YAML-node toolkit the config files are validated with.

A `Document` is the file being loaded (its name, for messages, and its directory, for
relative paths). The functions read one node each, against what it must be, and fail with
a `ConfigError` naming the file, the node's line and its key path:

    /etc/smtp.yml:12: modules.foo.timeout: invalid duration "10x": ...

`section` walks a fixed-schema mapping with a table of key -> parser, the way every section
of the main config and the web config is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, NoReturn, ParamSpec, TypeVar

import yaml

from smtp_exporter.config.durations import format_duration, parse_duration, quote_value
from smtp_exporter.config.errors import ConfigError, raise_errors

NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
MERGE_TAG = "tag:yaml.org,2002:merge"

_INT_RE = re.compile(r"[-+]?[0-9][0-9_]*")

# What an absent section reads as: the empty mapping, so it takes every default.
EMPTY = yaml.ScalarNode(NULL_TAG, "")


class Document:
    """The document being loaded: where it came from, for messages and relative paths, the
    files it names (`config.files` records them), which are watched like it, and the errors
    found so far in the parts checked independently (`errors`, in line order at the end)."""

    __slots__ = ("base_dir", "errors", "files", "source")

    def __init__(self, source: str, base_dir: str | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.files: list[str] = []
        self.errors: list[ConfigError] = []

    def raise_errors(self) -> None:
        """Raise what `errors` holds (see `config.errors.raise_errors`), by line."""
        raise_errors(sorted(self.errors, key=lambda error: error.line or 0))

    def error(self, node: yaml.Node | int | None, path: str, message: str) -> ConfigError:
        line = node if isinstance(node, int) or node is None else line_of(node)
        return ConfigError(self.source, message, line=line, path=path)

    def fail(self, node: yaml.Node | int | None, path: str, message: str) -> NoReturn:
        raise self.error(node, path, message)

    def path(self, value: str) -> str:
        """A file name from the document, relative ones anchored at its directory."""
        if self.base_dir and not os.path.isabs(value):
            return os.path.normpath(os.path.join(self.base_dir, value))
        return value


Parser = Callable[[Document, yaml.Node, str], Any]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def checked(
    doc: Document, fallback: _T, parse: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> tuple[_T, bool]:
    """`(parse(*args, **kwargs), True)`, or `(fallback, False)` with the error kept in
    `doc.errors`: for the parts of a document checked independently of each other (each module,
    each target, each section), so that one pass finds the error of every part."""
    try:
        return parse(*args, **kwargs), True
    except ConfigError as exc:
        doc.errors.append(exc)
        return fallback, False


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def join(path: str, key: str) -> str:
    """The key path of `key` inside `path`."""
    return f"{path}.{key}" if path else key


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


def kind(node: yaml.Node) -> str:
    """What a node is, in words, for "must be X, not Y"."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        NULL_TAG: "empty",
        BOOL_TAG: "a boolean",
        INT_TAG: "a number",
        FLOAT_TAG: "a number",
    }.get(node.tag, "a string")


def pairs(doc: Document, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """The (key, key node, value node) of a mapping; duplicate and non-string keys are errors."""
    if is_null(node):
        return []
    if not isinstance(node, yaml.MappingNode):
        doc.fail(node, path, f"must be a mapping, not {kind(node)}")
    seen: dict[str, int] = {}
    result: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            doc.fail(key_node, path, "merge keys (<<) are not supported")
        if not isinstance(key_node, yaml.ScalarNode) or is_null(key_node) or key_node.value == "":
            doc.fail(key_node, path, "keys must be non-empty strings")
        key = key_node.value
        if key in seen:
            doc.fail(
                key_node, join(path, key), f"duplicate key {quote_value(key)} (first at line {seen[key]})"
            )
        seen[key] = line_of(key_node)
        result.append((key, key_node, value_node))
    return result


def fields(
    doc: Document, node: yaml.Node, path: str, allowed: Collection[str]
) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """The pairs of a fixed-schema mapping, unknown keys refused; an empty value means the default."""
    result = []
    for key, key_node, value_node in pairs(doc, node, path):
        if key not in allowed:
            doc.fail(key_node, path, f"unknown key {quote_value(key)}{suggest(key, allowed)}")
        if not is_null(value_node):
            result.append((key, key_node, value_node))
    return result


def suggest(key: str, allowed: Collection[str]) -> str:
    """` (did you mean "x"?)` for the closest of `allowed`, or nothing."""
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


_D = TypeVar("_D")


# A section's cross-check between keys: (doc, the section read, its key nodes, its path).
Check = Callable[[Document, _D, dict[str, yaml.Node], str], None]


def section(
    doc: Document,
    node: yaml.Node,
    path: str,
    default: _D,
    parsers: Mapping[str, Parser],
    check: Check[_D] | None = None,
) -> _D:
    """A dataclass section: `default` with each key the file sets read by its parser. `check`,
    when given, then sees the result and the key nodes (for lines), for the cross-checks
    between keys."""
    values: dict[str, Any] = {}
    keys: dict[str, yaml.Node] = {}
    for key, key_node, value in fields(doc, node, path, parsers):
        keys[key] = key_node
        values[key] = parsers[key](doc, value, join(path, key))
    result: _D = dataclasses.replace(default, **values)  # type: ignore[type-var]
    if check is not None:
        check(doc, result, keys, path)
    return result


def scalar(doc: Document, node: yaml.Node, path: str, what: str) -> yaml.ScalarNode:
    if not isinstance(node, yaml.ScalarNode) or is_null(node):
        doc.fail(node, path, f"must be {what}, not {kind(node)}")
    return node


def string(doc: Document, node: yaml.Node, path: str) -> str:
    """Any scalar's text as written (so `username: 0123` stays `0123`)."""
    return str(scalar(doc, node, path, "a string").value)


def boolean(doc: Document, node: yaml.Node, path: str) -> bool:
    value = scalar(doc, node, path, "true or false")
    if value.tag != BOOL_TAG:
        doc.fail(node, path, f"must be true or false, not {quote_value(value.value)}")
    return str(value.value).lower() in ("true", "yes", "on", "y")


def integer(doc: Document, node: yaml.Node, path: str, low: int, high: int) -> int:
    text = str(scalar(doc, node, path, "an integer").value)
    if node.tag != INT_TAG or not _INT_RE.fullmatch(text):
        doc.fail(node, path, f"must be an integer, not {quote_value(text)}")
    number = int(text.replace("_", ""))
    if not low <= number <= high:
        doc.fail(node, path, f"must be between {low} and {high}, not {number}")
    return number


def integer_in(low: int, high: int) -> Parser:
    """A parser of integers from `low` to `high`."""
    return lambda doc, node, path: integer(doc, node, path, low, high)


def duration(doc: Document, node: yaml.Node, path: str, maximum: float, *, allow_zero: bool = False) -> float:
    text = str(scalar(doc, node, path, "a duration").value)
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        doc.fail(node, path, str(exc))
    if seconds == 0 and not allow_zero:
        doc.fail(node, path, "must be greater than 0")
    if seconds > maximum:
        doc.fail(node, path, f"must be at most {format_duration(maximum)}, not {text}")
    return seconds


def duration_upto(maximum: float, *, allow_zero: bool = False) -> Parser:
    """A parser of durations up to `maximum` seconds."""
    return lambda doc, node, path: duration(doc, node, path, maximum, allow_zero=allow_zero)


_E = TypeVar("_E", bound=Any)


def choice(doc: Document, node: yaml.Node, path: str, allowed: Collection[_E]) -> _E:
    text = string(doc, node, path)
    for option in allowed:
        if str(option) == text:
            return option
    names = ", ".join(str(option) for option in allowed)
    doc.fail(node, path, f"invalid value {quote_value(text)}: must be one of {names}")


def one_of(allowed: Iterable[Any]) -> Parser:
    """A parser of one of `allowed` (enum members or strings), as written."""
    options = list(allowed)
    return lambda doc, node, path: choice(doc, node, path, options)


def sequence(
    doc: Document, node: yaml.Node, path: str, *, single: bool = False
) -> list[tuple[str, yaml.Node]]:
    """Items of a list (with their paths); with `single`, one scalar stands for a list of one."""
    if single and isinstance(node, yaml.ScalarNode) and not is_null(node):
        return [(path, node)]
    if not isinstance(node, yaml.SequenceNode):
        doc.fail(node, path, f"must be a list, not {kind(node)}")
    return [(f"{path}[{index}]", item) for index, item in enumerate(node.value)]
