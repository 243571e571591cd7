"""`smtp-exporter probe --output nagios`: the Nagios plugin API (status line, perfdata, exit
0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN) as a real subprocess against real local servers."""

from __future__ import annotations

import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.probe.test_command import run_probe, write_config
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA
from tests.service.test_blackbox_names import Chain

NUMBER = r"[0-9]+(?:\.[0-9]+)?"  # perfdata numbers: no exponent notation


@pytest.fixture
def config(tmp_path: Path, tls_ca: TestCA) -> str:
    return write_config(
        tmp_path,
        f"""
modules:
  handshake:
    ehlo: probe.test
    timeout: 10s
  tls:
    ehlo: probe.test
    starttls: required
    tls_config: {{ca_file: {tls_ca.ca_file}}}
""",
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def nagios(*args: str) -> tuple[int, str]:
    """Exit status and the one output line; stderr stays empty."""
    done = run_probe("--output", "nagios", *args)
    assert done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return done.returncode, lines[0]


def perfdata(line: str) -> dict[str, str]:
    """label -> `value;warn;crit;min` of the line's perfdata."""
    _, sep, data = line.partition("|")
    assert sep, line
    items = dict(item.split("=", 1) for item in data.split(" "))
    for value in items.values():
        assert re.fullmatch(rf"{NUMBER}s;(?:{NUMBER})?;(?:{NUMBER})?;0", value), value
    return items


def test_ok_without_tls(smtp_server: AiosmtpdServer, config: str) -> None:
    status, line = nagios("--config.file", config, "--module", "handshake", smtp_server.target)
    assert status == 0, line
    assert re.fullmatch(
        rf"SMTP OK - 127\.0\.0\.1:{smtp_server.port} answered in [0-9]+\.[0-9]{{3}}s\|.*", line
    ), line
    items = perfdata(line)
    assert list(items) == ["connect", "banner", "ehlo", "quit", "time"]
    assert all(value.endswith(";;;0") for value in items.values())


def certificate_days(server: AiosmtpdServer, config: str) -> int:
    done = run_probe("--config.file", config, "--module", "tls", "--output", "json", server.target)
    assert done.returncode == 0, done.stderr
    return math.floor((json.loads(done.stdout)["tls"]["cert_not_after_timestamp"] - time.time()) / 86400)


def test_ok_with_tls_names_version_and_certificate_days(starttls_server: AiosmtpdServer, config: str) -> None:
    days = certificate_days(starttls_server, config)
    status, line = nagios("--config.file", config, "--module", "tls", starttls_server.target)
    assert status == 0, line
    text = line.partition("|")[0]
    match = re.fullmatch(
        rf"SMTP OK - 127\.0\.0\.1:{starttls_server.port} answered in {NUMBER}s, TLSv1\.[23], "
        r"certificate valid ([0-9]+) days",
        text,
    )
    assert match, text
    assert abs(int(match.group(1)) - days) <= 1  # a day may turn between the two probes
    assert {"connect", "banner", "ehlo", "starttls", "tls", "time"} <= set(perfdata(line))


def test_certificate_thresholds(starttls_server: AiosmtpdServer, config: str) -> None:
    days = certificate_days(starttls_server, config)
    probe = ("--config.file", config, "--module", "tls", starttls_server.target)
    status, line = nagios("--cert-warning", "1d", "--cert-critical", "1h", *probe)
    assert status == 0 and line.startswith("SMTP OK - "), line
    status, line = nagios("--cert-warning", f"{days + 2}d", "--cert-critical", "1d", *probe)
    assert status == 1 and line.startswith("SMTP WARNING - "), line
    assert "(warning under " in line
    status, line = nagios("--cert-warning", f"{days + 3}d", "--cert-critical", f"{days + 2}d", *probe)
    assert status == 2 and line.startswith("SMTP CRITICAL - "), line
    assert "(critical under " in line


def test_certificate_threshold_without_tls_is_critical(smtp_server: AiosmtpdServer, config: str) -> None:
    status, line = nagios(
        "--config.file", config, "--module", "handshake", "--cert-warning", "21d", smtp_server.target
    )
    assert status == 2, line
    assert line.startswith(f"SMTP CRITICAL - 127.0.0.1:{smtp_server.port} answered in ")
    assert "no certificate to check" in line


def test_duration_thresholds(smtp_sink_factory: Callable[..., SmtpSink], config: str) -> None:
    """smtp-sink waits 1s before answering EHLO: the probe takes at least that (a coarse bound)."""
    sink = smtp_sink_factory(command_delays={"EHLO": 1})
    probe = ("--config.file", config, "--module", "handshake", sink.target)
    status, line = nagios("--warning", "30s", "--critical", "60s", *probe)
    assert status == 0 and line.startswith("SMTP OK - "), line
    assert re.fullmatch(rf"{NUMBER}s;30;60;0", perfdata(line)["time"])
    status, line = nagios("--warning", "500ms", *probe)
    assert status == 1 and line.startswith("SMTP WARNING - "), line
    assert "(warning over 500ms)" in line
    assert re.fullmatch(rf"{NUMBER}s;0\.5;;0", perfdata(line)["time"])
    status, line = nagios("--warning", "200ms", "--critical", "500ms", *probe)
    assert status == 2 and line.startswith("SMTP CRITICAL - "), line
    assert "(critical over 500ms)" in line


def test_failed_probe_is_critical(closed_port: int, config: str) -> None:
    status, line = nagios("--config.file", config, "--module", "handshake", f"127.0.0.1:{closed_port}")
    assert status == 2, line
    assert (
        line.startswith(f"SMTP CRITICAL - 127.0.0.1:{closed_port} failed in ")
        and "at phase connect (connect_refused)" in line
    )
    assert re.fullmatch(rf"{NUMBER}s;;;0", perfdata(line)["time"])


def test_rejected_greeting_is_critical_with_the_phases_done(
    fault_server: Callable[..., AiosmtpdServer], config: str
) -> None:
    server = fault_server("banner", 554, "5.7.1", "go away")
    status, line = nagios("--config.file", config, "--module", "handshake", "--warning", "30s", server.target)
    assert status == 2, line
    assert "at phase banner (" in line and "go away" in line
    assert {"connect", "time"} <= set(perfdata(line))


@pytest.mark.parametrize(
    "args",
    [
        ("--warning", "2x", "127.0.0.1:25"),
        ("--cert-critical", "soon", "127.0.0.1:25"),
        ("--module", "nope", "127.0.0.1:25"),
        ("--config.file", "/nonexistent/smtp.yml", "127.0.0.1:25"),
        ("--timeout", "0s", "127.0.0.1:25"),
        ("--bogus", "127.0.0.1:25"),
        ("127.0.0.1:99999",),
        (),
    ],
)
def test_usage_and_config_errors_are_unknown(args: tuple[str, ...]) -> None:
    for output in (("--output", "nagios"), ("--output=nagios",)):
        done = run_probe(*output, *args)
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    done = run_probe(*args)  # the text output keeps its usage status
    assert done.returncode == 2, (args, done.stderr)


def test_thresholds_need_nagios_output() -> None:
    done = run_probe("--warning", "2s", "127.0.0.1:25")
    assert done.returncode == 2 and done.stderr == "smtp-exporter probe: --warning needs --output nagios\n"


def test_text_and_json_keep_their_exit_status(closed_port: int) -> None:
    for output in ("text", "json"):
        done = run_probe("--output", output, f"127.0.0.1:{closed_port}")
        assert done.returncode == 1, done.stderr


def test_bad_config_content_is_unknown(tmp_path: Path) -> None:
    config = write_config(tmp_path, "modules:\n  foo:\n    port: 0\n")
    done = run_probe("--output", "nagios", "--config.file", config, "127.0.0.1:25")
    assert done.returncode == 3
    assert (
        done.stderr
        == f"smtp-exporter probe: {config}:3: modules.foo.port: must be between 1 and 65535, not 0\n"
    )


def test_certificate_days_count_to_the_earliest_expiry_in_the_chain(
    tmp_path: Path, smtp_server_factory: Callable[..., AiosmtpdServer]
) -> None:
    """An intermediate expiring in 20 days under a leaf valid for 60: the status line counts 20,
    and --cert-warning 30d warns, as a mail client would fail in 20 days."""
    chain = Chain(tmp_path, expired_extra=False)
    server = smtp_server_factory(starttls=chain.server_cert)
    config = write_config(
        tmp_path,
        f"""
modules:
  tls:
    ehlo: probe.test
    starttls: required
    tls_config: {{ca_file: {chain.ca_file}, server_name: mail.test}}
""",
    )
    probe = ("--config.file", config, "--module", "tls", server.target)
    status, line = nagios(*probe)
    assert status == 0, line
    assert re.search(r"certificate valid (19|20) days", line), line  # not the leaf's 59-60
    status, line = nagios("--cert-warning", "30d", *probe)
    assert status == 1 and "(warning under 4w2d)" in line, line
