"""The exporter as users run it: `python -m smtp_exporter` in a subprocess, driven by signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from smtp_exporter import __version__
from smtp_exporter.cli import main
from smtp_exporter.scheduler import shard_of
from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import REPO, ExporterProcess, sample_labels, sample_value, wait_for

MODULES = "modules:\n  quick: {timeout: 900ms, ehlo: probe.test}\n"


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_sighup_reload_and_sigterm_stop(
    write_config: Callable[[str], Path],
    smtp_sink_factory: Callable[..., SmtpSink],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    first, second = smtp_sink_factory(), smtp_sink_factory()
    path = write_config(
        MODULES + f"targets:\n  - {{target: '{first.target}', module: quick, interval: 1s}}\n"
    )
    process = exporter_process("--config.file", str(path), "--log.format", "json")
    assert process.url

    async def has(target: str) -> bool:
        status, text = await _get(process.url + "/metrics")
        return status == 200 and sample_value(text, "smtp_probe_success", target=target) is not None

    await wait_for(lambda: has(first.target), "the first target's result")
    path.write_text(MODULES + f"targets:\n  - {{target: '{second.target}', module: quick, interval: 1s}}\n")
    process.signal(signal.SIGHUP)
    process.wait_log('"config reloaded"')
    await wait_for(lambda: has(second.target), "the reloaded target's result")
    assert not await has(first.target)

    process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait) == 0
    logs = "".join(process.stderr_lines)
    assert '"msg": "stopped"' in logs
    assert "Traceback" not in logs


def test_config_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("targets:\n  - {target: 'mx.example.org', module: nope}\n")
    run = subprocess.run(
        [sys.executable, "-m", "smtp_exporter", "--config.file", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and str(bad) in run.stderr and ":2:" in run.stderr
    assert "Traceback" not in run.stderr

    check = subprocess.run(
        [sys.executable, "-m", "smtp_exporter", "--config.check", "--config.file", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert check.returncode == 2 and "nope" in check.stderr


def test_cli_check_version_and_usage(tmp_path: Path, capsys: object) -> None:
    good = tmp_path / "good.yml"
    good.write_text(MODULES + "targets:\n  - {target: 'mx.example.org', module: quick, interval: 1m}\n")
    assert main(["--config.check", "--config.file", str(good)]) == 0
    assert main(["--config.check"]) == 0  # the embedded default config
    assert main(["--version"]) == 0
    out = capsys.readouterr()  # type: ignore[attr-defined]
    assert out.out.count("config OK") == 2
    assert f"smtp-exporter {__version__}" in out.out
    assert main(["--config.check", "--config.file", str(tmp_path / "missing.yml")]) == 2
    assert main(["--config.check", "--shard.count", "2", "--shard.index", "2"]) == 2
    assert main(["--config.check", "--web.listen-address", "nonsense"]) == 2
    assert main(["--config.check", "--web.config.file", str(tmp_path / "missing-web.yml")]) == 2
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 4


async def test_sharding_splits_targets_across_processes(
    write_config: Callable[[str], Path],
    smtp_sink: SmtpSink,
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    # Twelve targets split over three shards: the sink, and low ports of 127.0.0.1 where nothing
    # listens (their probes fail fast with connect_refused, which is a result all the same).
    targets = [smtp_sink.target, *(f"127.0.0.1:{port}" for port in range(1, 12))]
    path = write_config(
        MODULES
        + "targets:\n"
        + "".join(f"  - {{target: '{t}', module: quick, interval: 1s}}\n" for t in targets)
    )
    shards = [
        exporter_process("--config.file", str(path), "--shard.count", "3", "--shard.index", str(index))
        for index in range(3)
    ]
    expected = {index: {t for t in targets if shard_of(t, 3) == index} for index in range(3)}
    assert all(expected.values()), "the test's targets should land in every shard"
    seen: dict[int, set[str]] = {}

    async def scraped_all() -> bool:
        for index, process in enumerate(shards):
            _, text = await _get(process.url + "/metrics")
            seen[index] = {labels["target"] for labels in sample_labels(text, "smtp_probe_success")}
        return all(seen[index] == expected[index] for index in range(3))

    await wait_for(scraped_all, "every shard to probe exactly its targets")
    union = set().union(*seen.values())
    assert union == set(targets)
    assert sum(len(s) for s in seen.values()) == len(targets)  # no target in two shards
