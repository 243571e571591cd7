"""Small helpers shared by the test suite.

There is deliberately no `free_port()`: asking the kernel for a free port and binding it
later races with every other test. Servers bind port 0 themselves and report the port.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from smtp_exporter.metrics import MetricsStore, SeriesState
from smtp_exporter.model import ProbeResult

# The Debian package that provides each system binary the tests use.
DEBIAN_PACKAGES = {
    "smtp-sink": "postfix",
    "smtp-source": "postfix",
    "master": "postfix",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "chromium": "chromium",
    "openssl": "openssl",
    "nsd": "nsd",
    "nsd-control": "nsd",
    "unbound": "unbound",
    "unbound-control": "unbound",
    "ldns-keygen": "ldnsutils",
    "ldns-signzone": "ldnsutils",
    "dovecot": "dovecot-imapd dovecot-lmtpd",
    "/usr/lib/dovecot/imap": "dovecot-imapd",
    "/usr/lib/dovecot/imap-login": "dovecot-imapd",
    "/usr/lib/dovecot/lmtp": "dovecot-lmtpd",
    "curl": "curl",
    "ip": "iproute2",
    "git": "git",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}

# Places where Debian installs binaries that are not on an ordinary user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")

REQUIRE_ALL_ENV = "SMTP_EXPORTER_REQUIRE_ALL"


def require_binary(name: str) -> str:
    """The absolute path of system binary `name`, or skip the test when it is missing.

    With SMTP_EXPORTER_REQUIRE_ALL=1 (as in CI) a missing binary fails the test instead,
    naming the Debian package to install, so a green CI run never hides skipped tests.
    """
    found = shutil.which(name)
    if found is None:
        for directory in _EXTRA_DIRS:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    if found is not None:
        return found
    package = DEBIAN_PACKAGES.get(name)
    hint = f" (Debian package {package!r}: apt-get install {package})" if package else ""
    skip_or_fail(f"required binary {name!r} not found on PATH, /usr/sbin or /usr/lib/postfix/sbin{hint}")


def skip_or_fail(message: str) -> NoReturn:
    """Skip the test, or fail it under SMTP_EXPORTER_REQUIRE_ALL=1 (CI): no silent skips there."""
    if os.environ.get(REQUIRE_ALL_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ALL_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(message)


def require_module(name: str) -> ModuleType:
    """An optional Python module the tests need (e.g. uvloop, from the [uvloop] extra)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(f"Python module {name!r} is not installed (pip install -e '.[test,uvloop]')")


def scrape_text(store: MetricsStore) -> str:
    """What /metrics shows of a store's series (HELP and TYPE lines included): their fragments
    as a scrape writes them, each after its family's line head."""
    return b"".join(store.render(openmetrics=False)).decode()


def series_text(state: SeriesState, *results: ProbeResult) -> str:
    """What /metrics shows of one scheduled series after `results`, in a store of its own."""
    store = MetricsStore()
    for result in results:
        store.record(state, result)
    return scrape_text(store)
