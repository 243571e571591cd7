"""A bad config never raises anything but ConfigError (issue 6: fuzzing the config loader)."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_exporter.config.errors import MAX_LISTED_ERRORS, ConfigErrors
from smtp_exporter.config.loader import ConfigError, load_config_text
from smtp_exporter.config.schema import (
    AuthConfig,
    Config,
    DNSConfig,
    ExpectConfig,
    MessageConfig,
    ModuleConfig,
    TargetConfig,
    TLSConfig,
)
from smtp_exporter.config.web import load_web_config_text


def load_or_error(text: str) -> None:
    try:
        config = load_config_text(text, source="fuzz.yml")
    except ConfigError as exc:
        # One line per independent error (`ConfigErrors`), each naming the file.
        errors = exc.errors if isinstance(exc, ConfigErrors) else (exc,)
        lines = str(exc).splitlines()
        assert len(lines) == min(len(errors), MAX_LISTED_ERRORS + 1)
        assert all(line.startswith("fuzz.yml") for line in lines)
        assert all(len(str(error).splitlines()) == 1 for error in errors)
    else:
        assert isinstance(config, Config)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["10s", "0", "1m30s", "10x", "auto", "TLS12", "each", "*.example.org", "::1", "[::1]:53"]
    ),
)
structures = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def keys(*classes: type) -> list[str]:
    return [field.name for cls in classes for field in dataclasses.fields(cls)]  # type: ignore[arg-type]


# Values placed under the schema's real keys reach the deep validation code.
schema_keys = st.sampled_from(
    [
        *keys(ModuleConfig, TLSConfig, AuthConfig, MessageConfig, ExpectConfig, DNSConfig, TargetConfig),
        "password",
        "target",
        "interval",
        "count",
        "index",
        "max_concurrency",
        "histogram_buckets",
        "allowed_targets",
    ]
)
schema_like = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(schema_keys, children, max_size=5)
    ),
    max_leaves=25,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "modules": st.dictionaries(st.sampled_from(["a", "smtp_full", "b c", "mx"]), schema_like, max_size=3),
        "defaults": schema_like,
        "targets": st.lists(schema_like, max_size=4),
        "scheduler": schema_like,
        "metrics": schema_like,
        "http_probe": schema_like,
        "shard": schema_like,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    load_or_error(text)


yamlish = st.lists(
    st.sampled_from(
        [
            "modules:",
            "targets:",
            "  - ",
            "  foo:",
            "    port: ",
            "&a ",
            "*a",
            "<<: ",
            "{",
            "}",
            "[",
            "]",
            ": ",
            "'",
            '"',
            "\n",
            "\t",
            "---",
            "? ",
            "!!str ",
            "!!python/object ",
            "#",
            "timeout: 10s",
            "- target: x",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(yamlish)
def test_yaml_ish_text(text: str) -> None:
    load_or_error(text)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(structures)
def test_arbitrary_structures(data: Any) -> None:
    load_or_error(yaml.safe_dump(data))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_schema_shaped_documents(data: Any) -> None:
    load_or_error(yaml.safe_dump(data))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "tls_server_config": schema_like,
            "http_server_config": schema_like,
            "basic_auth_users": st.dictionaries(st.text(max_size=8), leaves, max_size=3),
        },
    )
)
def test_web_config(data: Any) -> None:
    try:
        load_web_config_text(yaml.safe_dump(data), source="web.yml")
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == 1
