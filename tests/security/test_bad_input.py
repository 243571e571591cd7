"""Bad config at start and at reload (issue 6, Bad input to the exporter).

At start: exit status 2 and one line on stderr naming the file, the line and the key path;
never a traceback. At reload: the running config stays (its targets keep being probed and
keep their series), the reload-success gauge says 0 and POST /-/reload answers 500 with
the error; a good config then sets the gauge back to 1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import REPO, ExporterProcess, sample_value

GOOD_MODULES = "modules:\n  quick: {timeout: 900ms}\n"

# name -> (config text, key path the message must name, line it must name (None: no line))
BAD: dict[str, tuple[str, str, int | None]] = {
    "malformed_yaml": (GOOD_MODULES + "targets:\n  - {target: [a, b\n", "", 5),  # found at the end
    "tab_indentation": (GOOD_MODULES + "targets:\n\t- target: a\n", "", 4),
    "wrong_type": ("modules:\n  quick:\n    port: twenty-five\n", "modules.quick.port", 3),
    "wrong_type_list": ("modules:\n  quick: [timeout, 1s]\n", "modules.quick", 2),
    "unknown_key": ("modules:\n  quick:\n    timout: 1s\n", "modules.quick", 3),
    "unknown_top_key": (GOOD_MODULES + "target:\n  - {target: a}\n", "target", 3),
    "missing_password_file": (
        "modules:\n  sub:\n    starttls: required\n    auth: {username: u, password_file: /nonexistent/pw}\n",
        "modules.sub.auth.password_file",
        4,
    ),
    "password_file_is_a_fifo": (
        "modules:\n  sub:\n    starttls: required\n    auth: {username: u, password_file: fifo.pw}\n",
        "modules.sub.auth.password_file",
        4,
    ),
    "password_file_is_dev_zero": (
        "modules:\n  sub:\n    starttls: required\n    auth: {username: u, password_file: /dev/zero}\n",
        "modules.sub.auth.password_file",
        4,
    ),
    "password_file_is_a_directory": (
        "modules:\n  sub:\n    starttls: required\n    auth: {username: u, password_file: /tmp}\n",
        "modules.sub.auth.password_file",
        4,
    ),
    "duplicate_targets": (
        GOOD_MODULES
        + "targets:\n  - {target: 'a.test:25', module: quick}\n  - {target: 'a.test:25', module: quick}\n",
        "targets[1]",
        5,
    ),
    "invalid_label_name": (
        GOOD_MODULES + "targets:\n  - target: a.test\n    module: quick\n    labels: {0team: mail}\n",
        "targets[0].labels",
        6,
    ),
    "label_clashes_with_ours": (
        GOOD_MODULES + "targets:\n  - target: a.test\n    module: quick\n    labels: {phase: x}\n",
        "targets[0].labels",
        6,
    ),
    "interval_zero": (
        GOOD_MODULES + "targets:\n  - {target: a.test, module: quick, interval: 0s}\n",
        "targets[0]",
        4,
    ),
    "timeout_10_days": ("modules:\n  quick: {timeout: 10d}\n", "modules.quick.timeout", 2),
    "negative_port": ("modules:\n  quick: {port: -25}\n", "modules.quick.port", 2),
    "crlf_injection_in_ehlo": (
        'modules:\n  quick: {ehlo: "a\\r\\nMAIL FROM:<x>"}\n',
        "modules.quick.ehlo",
        2,
    ),
    "unknown_module": ("targets:\n  - {target: a.test, module: nope}\n", "targets[0].module", 2),
    "bad_target": ("targets:\n  - {target: 'a.test:99999'}\n", "targets[0].target", 2),
}


@pytest.fixture
def bad_config(tmp_path: Path) -> Callable[[str], Path]:
    os.mkfifo(tmp_path / "fifo.pw")

    def write(name: str) -> Path:
        path = tmp_path / f"{name}.yml"
        path.write_text(BAD[name][0])
        return path

    return write


def check_one_line(stderr: str, path: Path, key: str, line: int | None) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert where in lines[0], (where, lines[0])
    assert key in lines[0], (key, lines[0])


def _start_with(config: Path) -> subprocess.CompletedProcess[str]:
    """Start the exporter with `config`, as a user would; it must exit on its own."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "smtp_exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_at_start_exits_2_with_one_line(bad_config: Callable[[str], Path], name: str) -> None:
    path = bad_config(name)
    _, key, line = BAD[name]
    done = _start_with(path)
    assert done.returncode == 2, done.stderr
    check_one_line(done.stderr, path, key, line)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    done = _start_with(path)
    assert done.returncode == 2
    check_one_line(done.stderr, path, "", None)


def million_targets(path: Path) -> Path:
    with path.open("w") as out:
        out.write(GOOD_MODULES + "targets:\n")
        out.writelines(f"  - {{target: h{i}.example.org, module: quick}}\n" for i in range(1_000_000))
    return path


def test_a_million_targets_is_refused_at_start(tmp_path: Path) -> None:
    path = million_targets(tmp_path / "million.yml")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "smtp_exporter", "--config.file", str(path), "--config.check"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    check_one_line(done.stderr, path, "targets", 4)
    assert time.monotonic() - started < 240


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_bad_reloads_keep_the_running_config(
    tmp_path: Path, smtp_sink_factory: Callable[..., SmtpSink], bad_config: Callable[[str], Path]
) -> None:
    sink = smtp_sink_factory()
    good = GOOD_MODULES + f"targets:\n  - {{target: '{sink.target}', module: quick, interval: 1s}}\n"
    config = tmp_path / "exporter.yml"
    config.write_text(good)
    exporter = ExporterProcess("--config.file", str(config)).start()
    labels = {"target": sink.target, "module": "quick"}
    try:
        async with aiohttp.ClientSession() as session:
            url = exporter.url

            async def probes(*, required: bool = True) -> float:
                _, text = await _get(session, url + "/metrics")
                if required:
                    assert sample_value(text, "smtp_probe_success", **labels) == 1, (
                        "good target's series missing"
                    )
                return sample_value(text, "smtp_probes_total", **labels) or 0

            for _ in range(100):
                if await probes(required=False) >= 1:
                    break
                await asyncio.sleep(0.1)
            for name, text in ((name, BAD[name][0]) for name in sorted(BAD)):
                before = await probes()
                config.write_text(text)
                async with session.post(url + "/-/reload") as response:
                    status, body = response.status, await response.text()
                assert status == 500, (name, status, body)
                assert len(body.strip().splitlines()) == 1 and str(config) in body, (name, body)
                _, metrics = await _get(session, url + "/metrics")
                assert sample_value(metrics, "smtp_exporter_config_last_reload_successful") == 0, name
                # The old config keeps probing: the good target's counter moves on.
                deadline = time.monotonic() + 10
                while await probes() < before + 2:
                    assert time.monotonic() < deadline, f"{name}: the running config stopped probing"
                    await asyncio.sleep(0.2)
                assert (await _get(session, url + "/-/healthy"))[0] == 200
                config.write_text(good)
                async with session.post(url + "/-/reload") as response:
                    assert response.status == 200, await response.text()
                _, metrics = await _get(session, url + "/metrics")
                assert sample_value(metrics, "smtp_exporter_config_last_reload_successful") == 1, name
                assert (await probes()) >= before + 2  # a good reload keeps the counters
    finally:
        exporter.stop()
    assert "Traceback" not in "".join(exporter.stderr_lines)


async def test_a_huge_bad_reload_does_not_stall_the_running_exporter(
    tmp_path: Path, smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    """Reloading a million-target file (refused: too many targets) while the old config runs:
    the exporter keeps answering and probing during the parse, and its memory comes back."""
    sink = smtp_sink_factory()
    good = GOOD_MODULES + f"targets:\n  - {{target: '{sink.target}', module: quick, interval: 1s}}\n"
    config = tmp_path / "exporter.yml"
    config.write_text(good)
    huge = million_targets(tmp_path / "million.yml")
    exporter = ExporterProcess("--config.file", str(config)).start()
    assert exporter.process is not None
    labels = {"target": sink.target, "module": "quick"}
    try:
        async with aiohttp.ClientSession() as session:
            url = exporter.url
            for _ in range(100):
                _, text = await _get(session, url + "/metrics")
                if (sample_value(text, "smtp_probes_total", **labels) or 0) >= 2:
                    break
                await asyncio.sleep(0.1)
            before = sample_value(text, "smtp_probes_total", **labels) or 0
            rss_before = rss_kib(exporter.process.pid)
            os.replace(huge, config)  # an atomic swap, as a ConfigMap update does
            reload = asyncio.create_task(session.post(url + "/-/reload"))
            slowest = 0.0
            started = time.monotonic()
            while not reload.done():
                asked = time.monotonic()
                assert (await _get(session, url + "/-/healthy"))[0] == 200
                slowest = max(slowest, time.monotonic() - asked)
                await asyncio.sleep(0.2)
            reload_seconds = time.monotonic() - started
            response = await reload
            assert response.status == 500
            response.release()
            _, text = await _get(session, url + "/metrics")
            during = (sample_value(text, "smtp_probes_total", **labels) or 0) - before
            print(
                f"huge reload: {reload_seconds:.1f}s, slowest /-/healthy {slowest:.2f}s, "
                f"probes meanwhile {during:.0f}, RSS {rss_before} KiB -> {rss_kib(exporter.process.pid)} KiB"
            )
            assert sample_value(text, "smtp_exporter_config_last_reload_successful") == 0
            assert slowest < 1.0, f"/-/healthy took {slowest:.1f}s during a {reload_seconds:.0f}s reload"
            # Probing went on: about one probe a second of reload (whole seconds only: a reload
            # refused in under two seconds may fall between two probes).
            assert during >= int(reload_seconds * 0.5), (
                f"{during} probes in {reload_seconds:.1f}s (interval 1s)"
            )
    finally:
        exporter.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
