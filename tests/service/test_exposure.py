"""The start-up warning for an unrestricted `/probe` on a non-loopback listen address, on real
exporter processes. Those that listen on all interfaces run in a network namespace of their own
(`unshare --net`), so nothing is reachable from outside the test."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from smtp_exporter.web.exposure import UNRESTRICTED_PROBE_WARNING
from tests.helpers import require_binary
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.service.conftest import ExporterProcess, sample_value

WARNING = "/probe is unrestricted"
RESTRICTED = "http_probe:\n  allowed_targets: ['*.example.org:25']\n"
UNRESTRICTED = "scheduler:\n  max_concurrency: 10\n"


@pytest.fixture
def isolated() -> Iterator[Callable[..., ExporterProcess]]:
    """An exporter started in a network namespace of its own, listening on all its interfaces
    too (beside the 127.0.0.1:0 every ExporterProcess listens on)."""
    unshare = require_binary("unshare")
    wrapper = (unshare, "--net") if os.geteuid() == 0 else (unshare, "--net", "--map-root-user")
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        process = ExporterProcess("--web.listen-address", "0.0.0.0:0", *args, wrapper=wrapper)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def warnings(process: ExporterProcess) -> list[str]:
    return [line for line in process.stderr_lines if WARNING in line]


def reload(process: ExporterProcess, config: Path, text: str) -> None:
    config.write_text(text)
    process.signal(signal.SIGHUP)
    process.wait_log("config reloaded")


def test_all_interfaces_unrestricted_warns_once_naming_the_fix(
    isolated: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(UNRESTRICTED)
    process = isolated("--config.file", str(config))
    [line] = warnings(process)
    assert "level=warn" in line
    assert "http_probe.allowed_targets" in line and "basic auth" in line and "loopback" in line
    assert "listen=0.0.0.0:" in line and "127.0.0.1" not in line  # the exposed address only
    assert f'msg="{UNRESTRICTED_PROBE_WARNING}"' in line
    reload(process, config, UNRESTRICTED)  # still unrestricted: said once already
    assert len(warnings(process)) == 1


def test_reload_that_lifts_the_restriction_warns(
    isolated: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(RESTRICTED)
    process = isolated("--config.file", str(config))
    assert warnings(process) == []
    reload(process, config, UNRESTRICTED)
    assert len(warnings(process)) == 1
    reload(process, config, RESTRICTED)
    reload(process, config, UNRESTRICTED)  # unrestricted again: a new warning
    assert len(warnings(process)) == 2


def test_basic_auth_is_a_restriction_and_its_removal_warns(
    isolated: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(UNRESTRICTED)
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    web.write_text(f"basic_auth_users:\n  admin: '{hashed}'\n")
    process = isolated("--config.file", str(config), "--web.config.file", str(web))
    assert warnings(process) == []
    web.write_text("# no basic auth any more\n")
    process.wait_log("web config reloaded")
    assert len(warnings(process)) == 1


def test_the_embedded_default_config_on_all_interfaces_warns_and_runs(
    isolated: Callable[..., ExporterProcess],
) -> None:
    process = isolated()
    assert len(warnings(process)) == 1


def test_loopback_only_does_not_warn(
    exporter_process: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(UNRESTRICTED)
    process = exporter_process("--config.file", str(config), "--web.listen-address", "[::1]:0")
    reload(process, config, UNRESTRICTED)
    assert warnings(process) == [], process.stderr_lines


async def test_the_embedded_default_config_works_as_a_sidecar(
    exporter_process: Callable[..., ExporterProcess], smtp_server: AiosmtpdServer
) -> None:
    """No --config.file, loopback only: no warning, localhost:25 scheduled, and /probe answers."""
    process = exporter_process()
    assert warnings(process) == [], process.stderr_lines
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{process.url}/metrics") as response:
            assert sample_value(await response.text(), "smtp_exporter_targets") == 1
        params = {"target": f"127.0.0.1:{smtp_server.port}", "module": "smtp_handshake"}
        async with session.get(f"{process.url}/probe", params=params) as response:
            assert response.status == 200
            assert sample_value(await response.text(), "smtp_probe_success") == 1
