"""`smtp-exporter probe` as a real subprocess: output contract, exit status, error messages."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers.aiosmtpd_server import TEST_PASSWORD, TEST_USERNAME, AiosmtpdServer
from tests.servers.dns_server import DnsServer
from tests.servers.tls import TestCA

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from smtp_exporter.probe.command import main; sys.exit(main(sys.argv[1:]))"

TOP_KEYS = {
    "target",
    "module",
    "success",
    "duration_seconds",
    "failure",
    "phases",
    "tls",
    "server",
    "address",
    "mx",
    "attempts",
    "posture",
    "delivery",  # null unless the module has `delivery` (tests/delivery/test_roundtrip.py)
    "pipelined",
    "transcript",
}
PHASE_KEYS = {"phase", "duration_seconds", "reply_code", "enhanced_status", "reply"}
TLS_KEYS = {
    "version",
    "cipher",
    "verified",
    "verify_error",
    "cert_not_before_timestamp",
    "cert_not_after_timestamp",
    "chain_earliest_not_after_timestamp",
    "subject",
    "issuer",
    "sans",
    "fingerprint_sha256",
}


def run_probe(
    *args: str, entry: list[str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, *(entry or ["-c", ENTRY]), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "smtp.yml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def config(tmp_path: Path, tls_ca: TestCA) -> str:
    password_file = tmp_path / "password"
    password_file.write_text(TEST_PASSWORD + "\n")
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("not-the-Pa55word\n")
    return write_config(
        tmp_path,
        f"""
modules:
  handshake:
    ehlo: probe.test
    timeout: 5s
  tls:
    ehlo: probe.test
    starttls: required
    tls_config: {{ca_file: {tls_ca.ca_file}}}
  submission_test:
    ehlo: probe.test
    starttls: required
    tls_config: {{ca_file: {tls_ca.ca_file}}}
    auth: {{mechanism: PLAIN, username: {TEST_USERNAME}, password_file: {password_file}}}
    transaction: message
    rcpt_to: [postmaster@mail.test]
  submission_wrong:
    ehlo: probe.test
    starttls: required
    tls_config: {{ca_file: {tls_ca.ca_file}}}
    auth: {{mechanism: LOGIN, username: {TEST_USERNAME}, password_file: {wrong_file}}}
""",
    )


@pytest.fixture
def listening_silent() -> Iterator[int]:
    """A socket that listens but never accepts: connections succeed, no banner ever comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_json_output_contract(starttls_server: AiosmtpdServer, config: str) -> None:
    done = run_probe("--config.file", config, "--module", "tls", "--output", "json", starttls_server.target)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    document = json.loads(done.stdout)
    assert set(document) == TOP_KEYS
    assert [set(attempt) for attempt in document["attempts"]] == [
        {"mx_host", "address", "family", "outcome", "phase", "reason", "duration_seconds"}
    ]
    assert document["attempts"][0]["outcome"] == "connected"
    assert document["target"] == starttls_server.target
    assert document["module"] == "tls"
    assert document["success"] is True
    assert document["failure"] is None
    assert isinstance(document["duration_seconds"], float) and 0 < document["duration_seconds"] < 5
    assert [p["phase"] for p in document["phases"]] == [
        "connect",
        "banner",
        "ehlo",
        "starttls",
        "tls",
        "ehlo_tls",
        "quit",
    ]
    for phase in document["phases"]:
        assert set(phase) == PHASE_KEYS
    assert document["phases"][1]["reply_code"] == 220
    assert document["phases"][0]["reply_code"] is None
    assert set(document["tls"]) == TLS_KEYS
    assert document["tls"]["verified"] is True
    assert document["tls"]["sans"] == ["localhost", "mail.test", "127.0.0.1", "::1"]
    assert set(document["server"]) == {"banner", "extensions"}
    assert document["server"]["extensions"]["SIZE"] == ["10485760"]
    assert document["address"] == {"ip": "127.0.0.1", "port": starttls_server.port, "family": 4}
    assert document["mx"] is None
    assert isinstance(document["transcript"], list) and document["transcript"]
    assert any(line["text"] == "EHLO probe.test" for line in document["transcript"])


def test_json_failure(closed_port: int, config: str) -> None:
    done = run_probe(
        "--config.file", config, "--module", "handshake", "--output", "json", f"127.0.0.1:{closed_port}"
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert set(document) == TOP_KEYS
    assert document["success"] is False
    assert set(document["failure"]) == {"phase", "reason", "message"}
    assert (document["failure"]["phase"], document["failure"]["reason"]) == ("connect", "connect_refused")
    assert document["tls"] is None and document["address"] is None


def test_json_mx(smtp_server: AiosmtpdServer, tmp_path: Path, dns_server: Callable[..., DnsServer]) -> None:
    dns = dns_server({"example.test": {"MX": "10 mx.example.test."}, "mx.example.test": {"A": "127.0.0.1"}})
    path = write_config(
        tmp_path,
        f"""
modules:
  mx_check:
    ehlo: probe.test
    port: {smtp_server.port}
    mx: true
    dns: {{nameservers: ["{dns.nameserver}"], timeout: 1s}}
""",
    )
    done = run_probe("--config.file", path, "--module", "mx_check", "--output", "json", "example.test")
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["mx"] == {"host": "mx.example.test", "preference": 10}
    assert document["phases"][0]["phase"] == "resolve"


def test_text_output(starttls_server: AiosmtpdServer, config: str) -> None:
    done = run_probe("--config.file", config, "--module", "tls", starttls_server.target)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Transcript:" in out and "Phases:" in out
    table = out.split("Phases:", 1)[1]
    for phase in ("connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"):
        assert f"\n  {phase} " in table
    assert "TLS: TLSv1.3" in out and "certificate verified" in out
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"SUCCESS {starttls_server.target} module=tls in ")
    assert f"via 127.0.0.1 port {starttls_server.port}" in last


def test_text_output_failure(closed_port: int, config: str) -> None:
    done = run_probe("--config.file", config, "--module", "handshake", f"127.0.0.1:{closed_port}")
    assert done.returncode == 1
    last = done.stdout.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"FAILURE 127.0.0.1:{closed_port} module=handshake in ")
    assert "phase=connect reason=connect_refused" in last


def test_timeout_option(listening_silent: int, config: str) -> None:
    started = time.monotonic()
    done = run_probe(
        "--config.file",
        config,
        "--module",
        "handshake",
        "--timeout",
        "500ms",
        "--output",
        "json",
        f"127.0.0.1:{listening_silent}",
    )
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert (document["failure"]["phase"], document["failure"]["reason"]) == ("banner", "timeout")
    assert document["duration_seconds"] < 1.0
    assert time.monotonic() - started < 10  # interpreter start included


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.parametrize("module", ["submission_test", "submission_wrong"])
def test_password_never_printed(auth_server: AiosmtpdServer, config: str, output: str, module: str) -> None:
    done = run_probe("--config.file", config, "--module", module, "--output", output, auth_server.target)
    assert done.returncode == (0 if module == "submission_test" else 1), done.stdout + done.stderr
    assert "235" in done.stdout or "535" in done.stdout
    for secret in (TEST_PASSWORD, "not-the-Pa55word"):
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            assert form not in done.stdout and form not in done.stderr
    assert base64.b64encode(f"\0{TEST_USERNAME}\0{TEST_PASSWORD}".encode()).decode() not in done.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["mail.example.test:99999"], ["invalid port", "99999"]),
        (["[::1"], ["::1"]),
        (["--module", "no_such_module", "127.0.0.1"], ["unknown module", "no_such_module"]),
        (["--timeout", "10x", "127.0.0.1"], ["--timeout"]),
        (["--timeout", "0s", "127.0.0.1"], ["--timeout"]),
        (["--timeout", "10d", "127.0.0.1"], ["--timeout"]),
        (["--output", "xml", "127.0.0.1"], ["xml"]),
        ([], ["target"]),
        (["--config.file", "/nonexistent/smtp.yml", "127.0.0.1"], ["/nonexistent/smtp.yml"]),
    ],
    ids=[
        "bad-port",
        "bad-bracket",
        "unknown-module",
        "bad-timeout",
        "zero-timeout",
        "ten-day-timeout",
        "bad-output",
        "no-target",
        "missing-config",
    ],
)
def test_usage_errors_exit_2(args: list[str], needles: list[str]) -> None:
    assert_one_line_error(run_probe(*args), *needles)


def test_bad_config_file_names_file_line_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "modules:\n  broken:\n    ehlo: probe.test\n    timeout: 10x\n")
    assert_one_line_error(
        run_probe("--config.file", path, "--module", "broken", "127.0.0.1"), path, ":4:", "timeout"
    )


def test_config_file_with_unknown_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "modules:\n  m:\n    ehlo: probe.test\n    startls: auto\n")
    assert_one_line_error(run_probe("--config.file", path, "--module", "m", "127.0.0.1"), path, "startls")


def test_config_file_yaml_syntax_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "modules:\n  m: {ehlo: probe.test\n")
    assert_one_line_error(run_probe("--config.file", path, "--module", "m", "127.0.0.1"), path)


def test_python_dash_m_probe(smtp_server: AiosmtpdServer, config: str) -> None:
    done = run_probe(
        "probe",
        "--config.file",
        config,
        "--module",
        "handshake",
        "--output",
        "json",
        smtp_server.target,
        entry=["-m", "smtp_exporter"],
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["success"] is True
