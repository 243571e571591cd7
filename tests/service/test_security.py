"""The exporter's own HTTP server behind TLS and bcrypt basic auth (exporter-toolkit web config)."""

from __future__ import annotations

import base64
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from smtp_exporter.config.web import load_web_config
from tests.helpers import require_binary
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA
from tests.service.conftest import running_exporter, sample_value

PASSWORD = "scrape-secret-42"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def web_config_file(tmp_path: Path, tls_ca: TestCA) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(
        f"""
tls_server_config:
  cert_file: {tls_ca.server_cert.cert_file}
  key_file: {tls_ca.server_cert.key_file}
basic_auth_users:
  prometheus: {hashed}
http_server_config:
  headers:
    X-Frame-Options: deny
"""
    )
    return path


def test_promtool_accepts_the_web_config(web_config_file: Path) -> None:
    promtool = require_binary("promtool")
    run = subprocess.run(
        [promtool, "check", "web-config", str(web_config_file)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


async def test_tls_and_basic_auth(
    write_config: Callable[[str], Path], web_config_file: Path, tls_ca: TestCA, smtp_sink: SmtpSink
) -> None:
    config = write_config(
        "modules:\n  quick: {timeout: 900ms}\n"
        f"targets:\n  - {{target: '{smtp_sink.target}', module: quick, interval: 1s}}\n"
    )
    client_tls = ssl.create_default_context(cafile=tls_ca.ca_file)
    async with running_exporter(config, web_config=load_web_config(str(web_config_file))) as running:
        url = running.url.replace("http://", "https://")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:

            async def get(path: str, auth: str | None = None) -> tuple[int, str, str]:
                headers = {"Authorization": auth} if auth else {}
                async with session.get(url + path, headers=headers) as response:
                    return (
                        response.status,
                        response.headers.get("WWW-Authenticate", ""),
                        await response.text(),
                    )

            good = _basic("prometheus", PASSWORD)
            for path in ("/metrics", "/", "/config", "/-/ready", "/probe?target=x", "/nope", "/-/reload"):
                status, challenge, _ = await get(path)
                assert status == 401 and challenge.startswith("Basic"), path
                assert (await get(path, _basic("prometheus", "wrong")))[0] == 401, path
                assert (await get(path, _basic("nobody", PASSWORD)))[0] == 401, path
            assert (await get("/-/healthy"))[0] == 200  # liveness probes carry no credentials
            assert (await get("/metrics", "Basic !!notbase64"))[0] == 401
            assert (await get("/metrics", "Bearer token"))[0] == 401

            status, _, text = await get("/metrics", good)
            assert status == 200
            assert sample_value(text, "smtp_exporter_build_info") == 1
            assert (await get("/-/ready", good))[0] == 200
            assert (await get("/nope", good))[0] == 404
            assert (await get("/-/reload", good))[0] == 405
            for path in ("/nope", "/-/reload", "/-/healthy", "/metrics"):
                async with session.get(url + path, headers={"Authorization": good}) as response:
                    assert response.headers.get("X-Frame-Options") == "deny", path
            # Cached after the first success: still right, and still refusing a wrong password.
            assert (await get("/metrics", good))[0] == 200
            assert (await get("/metrics", _basic("prometheus", PASSWORD + "x")))[0] == 401

        # Plain HTTP against the TLS listener gets no answer in clear text.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(running.url + "/-/healthy") as response:
                    await response.read()


async def test_configured_headers_without_users(
    write_config: Callable[[str], Path], tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """Without basic-auth users there is no auth middleware: the headers still reach every answer,
    errors aiohttp makes itself (404, 405) included."""
    web_config_file = tmp_path / "web.yml"
    web_config_file.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    config = write_config(
        "modules:\n  quick: {timeout: 500ms}\n"
        f"targets:\n  - {{target: '{smtp_sink.target}', module: quick, interval: 1s}}\n"
    )
    async with (
        running_exporter(config, web_config=load_web_config(str(web_config_file))) as running,
        aiohttp.ClientSession() as session,
    ):
        for path, status in (("/nope", 404), ("/-/reload", 405), ("/-/healthy", 200), ("/metrics", 200)):
            async with session.get(running.url + path) as response:
                assert response.status == status, path
                assert response.headers.get("X-Frame-Options") == "deny", path
