"""The files modules name (CA, certificate, key, password) are compiled into the running
snapshot at load and watched like the config file: one that goes missing after load never
breaks a probe (the loaded snapshot keeps probing), the reload it triggers is refused (the
reload gauge at 0, the file named in the log), and a restored or rotated file is picked up
without a restart."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.aiosmtpd_server import TEST_PASSWORD, TEST_USERNAME, AiosmtpdServer
from tests.servers.tls import TestCA
from tests.service.conftest import Running, running_exporter, sample_value, wait_for


def _config(target: str, tls_config: str, auth: str = "") -> str:
    return f"""
modules:
  tls:
    timeout: 900ms
    ehlo: probe.test
    starttls: required
    tls_config: {tls_config}
{auth}
targets:
  - {{target: "{target}", module: tls, interval: 1s}}
"""


def _failed_reloads(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(record.__dict__.get("fields", {}).get("error", ""))
        for record in caplog.records
        if record.getMessage() == "config reload failed, keeping the running config"
    ]


async def _probes(running: Running, target: str) -> float:
    return sample_value(await running.metrics(), "smtp_probes_total", target=target, module="tls") or 0.0


async def _reload_gauge(running: Running) -> float | None:
    return sample_value(await running.metrics(), "smtp_exporter_config_last_reload_successful")


async def test_a_ca_file_deleted_after_load_is_refused_while_probes_go_on_and_a_restored_one_is_picked_up(
    tmp_path: Path,
    write_config: Callable[[str], Path],
    starttls_server: AiosmtpdServer,
    tls_ca: TestCA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtp_exporter")
    ca_file = tmp_path / "secret" / "ca.pem"  # a mounted Secret's file
    ca_file.parent.mkdir()
    shutil.copy(tls_ca.ca_file, ca_file)
    target = starttls_server.target
    path = write_config(_config(target, f"{{ca_file: {ca_file}}}"))
    async with running_exporter(path, watch_interval=0.2) as running:
        await wait_for(
            lambda: _success(running, target, 1), "the first successful probe with the loaded CA file"
        )

        ca_file.unlink()
        await _refused_while_probing_goes_on(running, caplog, ca_file, target)
        status, text = await running.get("/probe", params={"target": target, "module": "tls"})
        assert status == 200, text
        assert sample_value(text, "probe_success") == 1
        assert not [r for r in caplog.records if "probe crashed" in r.getMessage()]

        # Rotated to a CA that does not trust the server: loaded, and in effect for the next probes.
        other_ca = TestCA(tmp_path / "other-ca")
        shutil.copy(other_ca.ca_file, ca_file)
        await wait_for(lambda: _gauge_is(running, 1), "the reload with the rotated CA file")
        await wait_for(lambda: _success(running, target, 0), "probes verifying with the rotated CA")

        # Restored: picked up again, without a restart.
        shutil.copy(tls_ca.ca_file, ca_file)
        await wait_for(lambda: _success(running, target, 1), "probes verifying with the restored CA")
        assert await _reload_gauge(running) == 1


async def test_a_rotated_password_file_takes_effect_without_a_restart(
    tmp_path: Path,
    write_config: Callable[[str], Path],
    auth_server: AiosmtpdServer,
    tls_ca: TestCA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtp_exporter")
    password_file = tmp_path / "password"
    password_file.write_text("not-the-password\n")
    auth = f"    auth: {{username: {TEST_USERNAME}, password_file: {password_file}}}"
    target = auth_server.target
    path = write_config(_config(target, f"{{ca_file: {tls_ca.ca_file}}}", auth))
    async with running_exporter(path, watch_interval=0.2) as running:
        await wait_for(lambda: _success(running, target, 0), "a probe failing with the wrong password")

        password_file.write_text(TEST_PASSWORD + "\n")
        await wait_for(lambda: _success(running, target, 1), "a probe with the rotated password")

        # An empty password file is refused like any bad config; the running snapshot stays.
        password_file.write_text("")
        await _refused_while_probing_goes_on(running, caplog, password_file, target)


async def _refused_while_probing_goes_on(
    running: Running, caplog: pytest.LogCaptureFixture, broken: Path, target: str
) -> None:
    """The reload `broken` triggers is refused, named in the log and shown by the gauge, while
    the loaded snapshot keeps probing: new results, still successful."""
    await wait_for(lambda: any(str(broken) in error for error in _failed_reloads(caplog)), "a refused reload")
    assert await _reload_gauge(running) == 0
    before = await _probes(running, target)
    await wait_for(lambda: _more_probes(running, target, before + 2), "probes after the refused reload")
    assert sample_value(await running.metrics(), "smtp_probe_success", target=target, module="tls") == 1


async def _success(running: Running, target: str, value: float) -> bool:
    text = await running.metrics()
    return sample_value(text, "smtp_probe_success", target=target, module="tls") == value


async def _more_probes(running: Running, target: str, count: float) -> bool:
    return await _probes(running, target) >= count


async def _gauge_is(running: Running, value: float) -> bool:
    return await _reload_gauge(running) == value
