"""The web config file and the files it names are watched, as exporter-toolkit's are re-read:
a renewed certificate or changed users apply without a restart, and a file that does not load
changes nothing."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.servers.tls import ServerCert, TestCA
from tests.service.conftest import ExporterProcess, Running, running_exporter, sample_value, wait_for

PASSWORD = "scrape-secret-42"
OTHER_PASSWORD = "another-secret-17"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _install(cert: ServerCert, directory: Path) -> None:
    """Put `cert` at directory/tls.crt and tls.key the way a secret update does: each file
    replaced whole, the key first."""
    for name, data in (("tls.key", cert.key_pem), ("tls.crt", cert.cert_pem)):
        staged = directory / f".{name}.new"
        staged.write_bytes(data)
        os.replace(staged, directory / name)


def _web_config(directory: Path, users: dict[str, str], *, min_version: str = "TLS12") -> str:
    lines = [
        "tls_server_config:",
        f"  cert_file: {directory / 'tls.crt'}",
        f"  key_file: {directory / 'tls.key'}",
        f"  min_version: {min_version}",
        "basic_auth_users:",
    ]
    lines += [
        f"  {user}: {bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}"
        for user, password in users.items()
    ]
    return "\n".join(lines) + "\n"


def _served_certificate(port: int, ca_file: str) -> bytes:
    """The DER certificate a new TLS connection to 127.0.0.1:port is given (no SNI: an IP)."""
    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(cert: ServerCert) -> bytes:
    return cert.certificate.public_bytes(Encoding.DER)


async def _scrape(running: Running, ca_file: str, auth: str) -> tuple[int, str]:
    url = running.url.replace("http://", "https://") + "/metrics"
    context = ssl.create_default_context(cafile=ca_file)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(url, headers={"Authorization": auth}) as response,
    ):
        return response.status, await response.text()


def _setup(
    write_config: Callable[[str], Path], directory: Path, tls_ca: TestCA
) -> tuple[ServerCert, ServerCert, Path, Path]:
    """Two certificates (the first installed), a web config with TLS and one user, a config
    without targets."""
    first, renewed = tls_ca.issue(), tls_ca.issue()
    _install(first, directory)
    web = directory / "web.yml"
    web.write_text(_web_config(directory, {"prometheus": PASSWORD}))
    return first, renewed, web, write_config("targets: []\n")


async def test_a_renewed_certificate_and_changed_users_apply_without_a_restart(
    write_config: Callable[[str], Path],
    tmp_path: Path,
    tls_ca: TestCA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, renewed, web, config = _setup(write_config, tmp_path, tls_ca)
    caplog.set_level(logging.INFO, logger="smtp_exporter")
    async with running_exporter(config, web_config_file=web, watch_interval=0.1) as running:
        port = running.exporter.addresses[0][1]

        async def served(cert: ServerCert) -> bool:
            return await asyncio.to_thread(_served_certificate, port, tls_ca.ca_file) == _der(cert)

        async def answers(auth: str, status: int) -> bool:
            return (await _scrape(running, tls_ca.ca_file, auth))[0] == status

        async def reload_gauge() -> float | None:
            _, text = await _scrape(running, tls_ca.ca_file, _basic("grafana", OTHER_PASSWORD))
            return sample_value(text, "smtp_exporter_web_config_last_reload_successful")

        assert await served(first)
        assert await answers(_basic("prometheus", PASSWORD), 200)

        # The certificate is renewed in place (cert-manager, a Kubernetes secret): new
        # connections get the new one.
        _install(renewed, tmp_path)
        await wait_for(lambda: served(renewed), "the renewed certificate served")

        # The users change: the new one gets in, the removed one no longer does.
        web.write_text(_web_config(tmp_path, {"grafana": OTHER_PASSWORD}))
        await wait_for(lambda: answers(_basic("grafana", OTHER_PASSWORD), 200), "the new user accepted")
        assert await answers(_basic("prometheus", PASSWORD), 401)
        assert await reload_gauge() == 1

        # A web config that does not load, and one that a running server cannot take, change
        # nothing: the last good one stays, and the log says why.
        for text, error in (
            ("basic_auth_users: [\n", "invalid YAML"),
            (_web_config(tmp_path, {"other": PASSWORD}, min_version="TLS13"), "min_version changed"),
        ):
            caplog.clear()
            web.write_text(text)
            await wait_for(
                lambda: any("web config reload failed" in r.getMessage() for r in caplog.records),
                "the failed reload to be logged",
            )
            failure = next(r for r in caplog.records if "web config reload failed" in r.getMessage())
            assert error in str(failure.__dict__.get("fields")), failure.__dict__
            assert await served(renewed)
            assert await answers(_basic("grafana", OTHER_PASSWORD), 200)
            assert await answers(_basic("other", PASSWORD), 401)
            assert await reload_gauge() == 0

        # Fixed: loaded, and the gauge says so.
        web.write_text(_web_config(tmp_path, {"grafana": OTHER_PASSWORD, "other": PASSWORD}))
        await wait_for(lambda: answers(_basic("other", PASSWORD), 200), "the fixed web config applied")
        assert await reload_gauge() == 1


def test_the_exporter_process_serves_a_renewed_certificate(
    write_config: Callable[[str], Path], tmp_path: Path, tls_ca: TestCA
) -> None:
    """The same through the command line, on the event loop the exporter runs on (uvloop)."""
    first, renewed, web, config = _setup(write_config, tmp_path, tls_ca)
    exporter = ExporterProcess("--config.file", str(config), "--web.config.file", str(web)).start()
    try:
        assert _served_certificate(exporter.port, tls_ca.ca_file) == _der(first)
        _install(renewed, tmp_path)
        exporter.wait_log("web config reloaded")
        assert _served_certificate(exporter.port, tls_ca.ca_file) == _der(renewed)
    finally:
        exporter.stop()
