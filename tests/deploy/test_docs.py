"""The user documentation against the running exporter: every phase and failure reason is in the
README's closed sets, every metric the exporter serves is in docs/metrics.md (and nothing there
that it does not serve), every config key of the effective config and every command-line flag is
in docs/configuration.md, and the README's config example is a valid config (its quick start is
replayed by test_quickstart.py).

The exporter runs as a subprocess on loopback and is asked over HTTP (`/metrics`, `/probe`,
`/config`, `--help`), so the check follows the public contract, not the package's insides.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.harness import Processes, http_get, wait_http_ok, wait_listening
from tests.deploy.contract import METRICS, PHASES, REASONS

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
METRICS_DOC = REPO / "docs" / "metrics.md"

# Config and /probe for the exporter under test: every section set, so that /config renders every
# key; one target on a closed loopback port, so that a probe completes (connect_refused) at once.
_CONFIG = """
modules:
  with_auth:
    starttls: required
    auth: {{username: probe, password_env: SMTP_EXPORTER_DOCS_TEST_PASSWORD}}
    tls_config: {{server_name: mx.example.org}}
    message: {{subject: docs, headers: {{X-Probe: docs}}}}
    expect: {{banner: ESMTP, extensions: [STARTTLS]}}
    dns: {{nameservers: [127.0.0.1]}}
  by_mx:
    mx: true
  quick:
    timeout: 500ms
targets:
  - {{target: "127.0.0.1:{port}", module: quick, interval: 1s, labels: {{team: mail}}}}
  - {{target: example.org, module: by_mx, interval: 1d, mx_mode: each}}
metrics: {{phase_histograms: true}}
http_probe: {{allowed_targets: ["127.0.0.1"]}}
"""
# Children that are names chosen by the user, not keys of the format.
_USER_NAMED = {"modules", "labels", "headers"}
# /config shows the password slot of `auth` as `password: <secret>`; it is not a key one can write
# (the docs say so: passwords come from `password_file` or `password_env`).
_RENDERED_ONLY = {"password"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of an exporter running `_CONFIG`, once its target has a result."""
    work = tmp_path_factory.mktemp("docs")
    config = work / "smtp.yml"
    config.write_text(_CONFIG.format(port=_closed_port()))
    env = {"SMTP_EXPORTER_DOCS_TEST_PASSWORD": "docs-test", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(REPO)
    with Processes(workdir=work, keep_workdir=True) as procs:
        argv = [sys.executable, "-m", "smtp_exporter", f"--config.file={config}"]
        process = procs.start("smtp-exporter", [*argv, "--web.listen-address=127.0.0.1:0"], env=env)
        port = wait_listening(process, timeout=60.0)
        wait_http_ok(process, port, "/-/ready", timeout=60.0)
        for _ in range(200):
            if b"smtp_probes_total{" in http_get(port, "/metrics").body:
                break
            process.check_alive()
            time.sleep(0.05)
        yield port


def _table_names(text: str) -> set[str]:
    """The `names` in the first cell of every Markdown table row of `text`."""
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first = line.split(" | ")[0]
            names |= set(re.findall(r"`([^`]+)`", first))
    return names


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    return text[start : end if end >= 0 else len(text)]


def _families(body: bytes) -> set[str]:
    return {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")}


def test_phases_and_reasons_are_the_readmes_closed_sets() -> None:
    documented = _table_names(_section(README.read_text(), "## What a probe measures"))
    assert documented >= PHASES
    assert documented >= REASONS
    assert documented - PHASES - REASONS == set(), "documented, but not a phase or a reason"


def test_every_metric_served_is_documented_and_only_those(exporter: int) -> None:
    served = _families(http_get(exporter, "/metrics").body)
    probed = http_get(exporter, "/probe?target=127.0.0.1:1&module=smtp_handshake")
    assert probed.status == 200
    served |= _families(probed.body)
    served = {name for name in served if not name.startswith(("process_", "python_"))}
    # The TLS, certificate, EHLO and MX families need peers this test does not run: the contract
    # the dashboard and alerts rely on lists them.
    contract = {re.sub(r"_(bucket|sum|count)$", "", name) for name in METRICS}
    documented = {name for name in _table_names(METRICS_DOC.read_text()) if re.fullmatch(r"[a-z_]+", name)}
    assert served | contract <= documented, "served but not in docs/metrics.md"
    assert documented <= served | contract, "in docs/metrics.md, but not served"


def _keys(node: Any, parent: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if parent not in _USER_NAMED:
                yield key
            yield from _keys(value, key if parent not in _USER_NAMED else "")
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item, parent)


def test_every_config_key_is_in_the_configuration_reference(exporter: int) -> None:
    response = http_get(exporter, "/config")
    assert response.status == 200
    keys = set(_keys(yaml.safe_load(response.body)))
    assert {"modules", "tls_config", "auth", "mx_mode", "history_limit", "allowed_targets"} <= keys
    missing = keys - _RENDERED_ONLY - _table_names(CONFIGURATION.read_text())
    assert missing == set(), "config keys not in docs/configuration.md"


def test_every_command_line_flag_is_in_the_configuration_reference() -> None:
    flags: set[str] = set()
    for argv in ([], ["probe"]):
        completed = subprocess.run(
            [sys.executable, "-m", "smtp_exporter", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z.-]*[a-z]", completed.stdout)) - {"--help"}
    assert {"--config.file", "--web.listen-address", "--output"} <= flags
    reference = _section(CONFIGURATION.read_text(), "## Command line")
    missing = {flag for flag in flags if f"`{flag}" not in reference and f" {flag} " not in reference}
    assert missing == set(), "flags not in docs/configuration.md's command line"


def test_the_readme_config_example_is_a_valid_config(tmp_path: Path) -> None:
    match = re.search(
        r"<!-- config-example[^>]*-->\n```yaml\n(.*?)```\n<!-- end config-example -->",
        README.read_text(),
        re.S,
    )
    assert match, "the config example is missing from README.md"
    path = tmp_path / "smtp.yml"
    path.write_text(match.group(1))
    completed = subprocess.run(
        [sys.executable, "-m", "smtp_exporter", "--config.check", f"--config.file={path}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert (completed.returncode, completed.stdout) == (0, "config OK\n"), completed.stderr
