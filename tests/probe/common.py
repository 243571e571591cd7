"""Helpers shared by the probe engine tests (tests/probe/)."""

from __future__ import annotations

import dataclasses
import functools
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from smtp_exporter.config.builtin import BUILTIN_MODULES
from smtp_exporter.config.modules import tls_configs
from smtp_exporter.config.schema import AuthConfig, AuthMechanism, ModuleConfig, Secret, TLSConfig
from smtp_exporter.model import ProbeResult
from smtp_exporter.probe import CompiledModule, compile_modules
from smtp_exporter.targets import Target, parse_target
from smtp_exporter.tls_settings import client_context
from tests.servers.aiosmtpd_server import TEST_PASSWORD, TEST_USERNAME
from tests.servers.tls import TestCA

# Always an explicit EHLO name: no getfqdn() (which may block on DNS) in tests.
EHLO = "probe.test"

# The phases of a full conversation through STARTTLS and AUTH, in order.
FULL_PHASES = (
    "connect",
    "banner",
    "ehlo",
    "starttls",
    "tls",
    "ehlo_tls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "message",
    "quit",
)
ENVELOPE_PHASES = (
    "connect",
    "banner",
    "ehlo",
    "starttls",
    "tls",
    "ehlo_tls",
    "auth",
    "mail",
    "rcpt",
    "rset",
    "quit",
)


def module(base: str = "smtp_handshake", **changes: Any) -> ModuleConfig:
    """A built-in module with `changes`, an explicit EHLO name and a short default deadline."""
    options: dict[str, Any] = {"ehlo": EHLO, "timeout": 5.0}
    options.update(changes)
    return dataclasses.replace(BUILTIN_MODULES[base], **options)


def compiled(target: str, name: str, settings: ModuleConfig) -> tuple[Target, CompiledModule, str]:
    """What `Prober.probe` takes, made the way the config loader makes it: `target` parsed with
    the module's port, the module `name` compiled (its SSL context built), and the text."""
    contexts = {tls: _client_context(tls) for tls in tls_configs(settings)}
    return parse_target(target, settings.port), compile_modules({name: settings}, contexts)[name], target


@functools.cache
def _client_context(tls: TLSConfig) -> ssl.SSLContext:
    # One per distinct TLSConfig, as a config load builds them: building one costs tens of
    # milliseconds (the system CAs), which tests that time many probes at once must not pay.
    return client_context(tls)


def trusting(ca: TestCA, **changes: Any) -> TLSConfig:
    """TLS settings that trust the test CA."""
    return TLSConfig(ca_file=ca.ca_file, **changes)


def auth(
    mechanism: AuthMechanism = AuthMechanism.AUTO,
    *,
    username: str = TEST_USERNAME,
    password: str = TEST_PASSWORD,
) -> AuthConfig:
    return AuthConfig(mechanism=mechanism, username=username, password=Secret(password))


def names(result: ProbeResult) -> list[str]:
    """The phase names of a result, in order."""
    return [p.phase.value for p in result.phases]


def describe(result: ProbeResult) -> str:
    """Everything useful about a result, for assertion messages."""
    lines = [f"success={result.success} failure={result.failure}", f"phases={names(result)}"]
    lines += [f"  {t.offset_seconds * 1000:8.2f}ms {t.direction} {t.text}" for t in result.transcript]
    return "\n".join(lines)


class Stopwatch:
    """Wall time of a block, to bound how long a probe took from the caller's view."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @classmethod
    @asynccontextmanager
    async def timing(cls) -> AsyncIterator[Stopwatch]:
        watch = cls()
        started = time.monotonic()
        try:
            yield watch
        finally:
            watch.seconds = time.monotonic() - started
