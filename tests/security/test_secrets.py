"""A planted AUTH password or OAuth token appears in no output of the exporter (issues 6, 17).

Two known passwords (one right, one wrong) are read from password files, two OAuth tokens
from token files (re-read at every probe); the exporter probes an aiosmtpd AUTH server with
PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER in scheduled mode, through /probe
(with and without debug=true), through SIGHUP and POST reloads, at log level debug in
logfmt and in json. Every byte it writes (stderr, /metrics, the landing page, /config,
the transcript pages, the `probe` command's text and json output, its error messages
for the failed AUTH) is then searched for each password and its base64 forms: the PLAIN
blob, the LOGIN line and the XOAUTH2 / OAUTHBEARER initial responses.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.tls import TestCA
from tests.service.conftest import REPO, ExporterProcess, sample_value

USERNAME = "probe-user"
RIGHT = "Planted-Right-Secret-9d1c"
WRONG = "Planted-Wrong-Secret-4b7e"
RIGHT_TOKEN = "ya29.Planted-Right-Token-5a0f"
WRONG_TOKEN = "ya29.Planted-Wrong-Token-c3e2"
# name, mechanism, the file's key, the file
MODULES = (
    ("plain_ok", "PLAIN", "password_file", "right.pw"),
    ("login_ok", "LOGIN", "password_file", "right.pw"),
    ("plain_bad", "PLAIN", "password_file", "wrong.pw"),
    ("login_bad", "LOGIN", "password_file", "wrong.pw"),
    ("xoauth2_ok", "XOAUTH2", "token_file", "right.token"),
    ("oauthbearer_ok", "OAUTHBEARER", "token_file", "right.token"),
    ("xoauth2_bad", "XOAUTH2", "token_file", "wrong.token"),
    ("oauthbearer_bad", "OAUTHBEARER", "token_file", "wrong.token"),
)
NAMES = tuple(name for name, *_ in MODULES)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(password: str) -> list[str]:
    """The password and the base64 forms AUTH puts on the wire (whole and in part)."""
    plain = b64(f"\0{USERNAME}\0{password}")
    login = b64(password)
    # Also a stretch of the PLAIN blob away from its (username-dependent) ends.
    return [password, plain, login, plain[8:-4], password.encode().hex()]


def token_forms(token: str) -> list[str]:
    """The token and the initial responses XOAUTH2 and OAUTHBEARER carry it in."""
    xoauth2 = b64(f"user={USERNAME}\x01auth=Bearer {token}\x01\x01")
    oauthbearer = b64(f"n,a={USERNAME},\x01auth=Bearer {token}\x01\x01")
    return [token, xoauth2, oauthbearer, xoauth2[12:-4], oauthbearer[12:-4], token.encode().hex()]


SECRETS = forms(RIGHT) + forms(WRONG) + token_forms(RIGHT_TOKEN) + token_forms(WRONG_TOKEN)


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret[:6]}... found in {where}"


def config_text(tmp_path: Path, server: AiosmtpdServer, ca_file: str) -> str:
    (tmp_path / "right.pw").write_text(RIGHT + "\n")
    (tmp_path / "wrong.pw").write_text(WRONG + "\n")
    (tmp_path / "right.token").write_text(RIGHT_TOKEN + "\n")
    (tmp_path / "wrong.token").write_text(WRONG_TOKEN + "\n")
    tls = f"tls_config: {{ca_file: {ca_file}}}"
    modules = "".join(
        f"""
  {name}:
    timeout: 900ms
    ehlo: probe.test
    starttls: required
    {tls}
    transaction: envelope
    auth: {{mechanism: {mechanism}, username: {USERNAME}, {key}: {file}}}"""
        for name, mechanism, key, file in MODULES
    )
    targets = "".join(f"\n  - {{target: '{server.target}', module: {name}, interval: 1s}}" for name in NAMES)
    return f"modules:{modules}\ntargets:{targets}\n"


def auth_server(factory: Callable[..., AiosmtpdServer], ca: TestCA) -> AiosmtpdServer:
    return factory(
        starttls=ca.server_cert, auth_users={USERNAME: RIGHT}, oauth_tokens={USERNAME: RIGHT_TOKEN}
    )


async def http(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, str]:
    async with session.request(method, url) as response:
        return response.status, await response.text()


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
async def test_planted_password_appears_in_no_output(
    tmp_path: Path,
    tls_ca: TestCA,
    smtp_server_factory: Callable[..., AiosmtpdServer],
    log_format: str,
) -> None:
    server = auth_server(smtp_server_factory, tls_ca)
    config = tmp_path / "config.yml"
    config.write_text(config_text(tmp_path, server, tls_ca.ca_file))
    exporter = ExporterProcess(
        "--config.file", str(config), "--log.level", "debug", "--log.format", log_format
    ).start()
    outputs: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession() as session:
            url = exporter.url
            # Scheduled mode: wait until every module ran at least twice.
            for _ in range(150):
                status, metrics = await http(session, "GET", url + "/metrics")
                counts = [sample_value(metrics, "smtp_probes_total", module=m) for m in NAMES]
                if all(c is not None and c >= 2 for c in counts):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"modules not probed twice: {counts}")
            outputs["/metrics"] = metrics
            for name in NAMES:
                expected = 1 if name.endswith("_ok") else 0
                assert sample_value(metrics, "smtp_probe_success", module=name) == expected, name
            for name in ("login_bad", "oauthbearer_bad"):
                assert sample_value(
                    metrics, "smtp_probe_failures_total", module=name, phase="auth", reason="auth_failed"
                )

            for module in NAMES:
                query = {"target": server.target, "module": module}
                outputs[f"/probe {module}"] = (
                    await http(session, "GET", url + "/probe?" + urlencode(query))
                )[1]
                status, debug = await http(
                    session, "GET", url + "/probe?" + urlencode({**query, "debug": "true"})
                )
                assert status == 200 and "AUTH" in debug, debug[:500]
                outputs[f"/probe debug {module}"] = debug
                status, transcript = await http(session, "GET", url + "/transcript?" + urlencode(query))
                assert status == 200 and "AUTH" in transcript, transcript[:500]
                outputs[f"/transcript {module}"] = transcript
            for path in ("/", "/history", "/config", "/-/healthy", "/-/ready"):
                outputs[path] = (await http(session, "GET", url + path))[1]
            assert "password" in outputs["/config"]  # the file's path is shown, never its content

            exporter.signal(signal.SIGHUP)
            await asyncio.to_thread(exporter.wait_log, "reload")
            status, text = await http(session, "POST", url + "/-/reload")
            assert status == 200, text
            outputs["POST /-/reload"] = text
            await asyncio.sleep(1.5)  # more scheduled probes after the reloads, logged at debug
            outputs["/metrics after reload"] = (await http(session, "GET", url + "/metrics"))[1]
        exporter.signal(signal.SIGTERM)
        assert await asyncio.to_thread(exporter.wait) == 0
    finally:
        exporter.stop()
    outputs["stderr"] = "".join(exporter.stderr_lines)

    # The server really saw both passwords: the search below is not vacuous.
    attempts = server.auth_attempts
    assert {(a.mechanism, a.success) for a in attempts} >= {
        (mechanism, success)
        for mechanism in ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
        for success in (True, False)
    }
    assert "probe transcript" in outputs["stderr"] and "AUTH PLAIN" in outputs["stderr"]
    assert "AUTH LOGIN" in outputs["stderr"] and "auth_failed" in outputs["stderr"]
    assert "AUTH OAUTHBEARER <redacted>" in outputs["stderr"] and "invalid_token" in outputs["stderr"]
    for where, text in outputs.items():
        assert_clean(where, text)


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.parametrize("module", NAMES)
def test_probe_command_output_has_no_password(
    tmp_path: Path,
    tls_ca: TestCA,
    smtp_server_factory: Callable[..., AiosmtpdServer],
    output: str,
    module: str,
) -> None:
    server = auth_server(smtp_server_factory, tls_ca)
    config = tmp_path / "config.yml"
    config.write_text(config_text(tmp_path, server, tls_ca.ca_file))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "smtp_exporter",
            "probe",
            "--config.file",
            str(config),
            "--module",
            module,
            "--output",
            output,
            server.target,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == (0 if module.endswith("_ok") else 1), done.stdout + done.stderr
    assert "AUTH" in done.stdout
    assert server.auth_attempts, "no AUTH reached the server"
    assert_clean("probe command stdout", done.stdout)
    assert_clean("probe command stderr", done.stderr)
