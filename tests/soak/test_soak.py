"""A bounded soak run of the exporter (issue 6, Fault and soak test).

One exporter process probes a few hundred targets: healthy servers (a peer process with
many ports, and Postfix's smtp-sink), servers that come and go (ports that stop and start
listening), and every hostile peer of tests/hostile. Meanwhile valid and invalid reloads
alternate and /metrics is scraped continuously. Checked over the whole run:

- resident memory and open descriptors flat (after warm-up vs the end, generous bounds);
- every healthy target probed on schedule (smtp_probes_total grows with the interval);
- every counter monotonic across every scrape;
- no series of an unchanged target ever missing from a scrape;
- the reload gauge follows the reloads; the process never logs a traceback.

SMTP_EXPORTER_SOAK_SECONDS sets the duration (default 90 s: CI); run longer by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.hostile.catalogue import CATALOGUE
from tests.hostile.certs import Material
from tests.hostile.conftest import PeerProcess
from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import REPO, ExporterProcess

SOAK_SECONDS = float(os.environ.get("SMTP_EXPORTER_SOAK_SECONDS", "90"))
WARMUP_SECONDS = min(20.0, SOAK_SECONDS / 4)
HEALTHY = 200
FLAPPY = 20
FLAP_SECONDS = 4.0
EXTRA = 20  # targets only in the second valid config (added and removed by reloads)
INTERVAL = 1
HOSTILE_INTERVAL = 3

Key = tuple[str, tuple[tuple[str, str], ...]]


def proc_stats(pid: int) -> tuple[int, int]:
    """(resident KiB, open descriptors) of process `pid`."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def config_text(
    healthy: list[str], flappy: list[str], hostile: list[str], sinks: list[str], extra: list[str]
) -> str:
    lines = [
        "scheduler: {max_concurrency: 256}",
        "modules:",
        "  quick: {timeout: 900ms, ehlo: probe.test}",
        "  full: {timeout: 900ms, ehlo: probe.test, transaction: message}",
        "  hostile: {timeout: 2s, ehlo: probe.test}",
        "  extra: {timeout: 900ms, ehlo: probe.test}",
        "targets:",
    ]
    lines += [f"  - {{target: '{t}', module: quick, interval: {INTERVAL:g}s}}" for t in healthy + flappy]
    lines += [f"  - {{target: '{t}', module: full, interval: {INTERVAL:g}s}}" for t in sinks]
    lines += [f"  - {{target: '{t}', module: hostile, interval: {HOSTILE_INTERVAL:g}s}}" for t in hostile]
    lines += [f"  - {{target: '{t}', module: extra, interval: {INTERVAL:g}s}}" for t in extra]
    return "\n".join(lines) + "\n"


@dataclass
class Observations:
    scrapes: int = 0
    regressions: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    last: dict[Key, float] = field(default_factory=dict)
    first_probes: dict[str, float] = field(default_factory=dict)
    final_probes: dict[str, float] = field(default_factory=dict)
    first_at: float = 0.0
    final_at: float = 0.0
    max_in_flight: float = 0.0
    stats: list[tuple[float, int, int]] = field(default_factory=list)


def observe(text: str, obs: Observations, unchanged: set[str], after_warmup: bool, now: float) -> None:
    counters: dict[Key, float] = {}
    present: set[str] = set()
    probes: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "smtp_exporter_probes_in_flight":
                obs.max_in_flight = max(obs.max_in_flight, sample.value)
            if labels.get("module") == "extra":
                continue  # added and removed by reloads: its counters legitimately restart
            if family.type in ("counter", "histogram") and not sample.name.endswith("_created"):
                counters[(sample.name, tuple(sorted(labels.items())))] = sample.value
            if sample.name == "smtp_probe_success":
                present.add(labels["target"])
            if sample.name == "smtp_probes_total":
                probes[labels["target"]] = sample.value
    for key, value in counters.items():
        previous = obs.last.get(key)
        if previous is not None and value < previous:
            obs.regressions.append(f"{key}: {previous} -> {value}")
    obs.last.update(counters)
    if after_warmup:
        obs.missing += [f"scrape {obs.scrapes}: {t}" for t in sorted(unchanged - present)]
        if not obs.first_probes:
            obs.first_probes, obs.first_at = probes, now
        obs.final_probes, obs.final_at = probes, now
    obs.scrapes += 1


@pytest.fixture
def soak_peers(
    tmp_path: Path, hostile_material: Material
) -> Iterator[tuple[dict[str, list[int]], PeerProcess]]:
    """The healthy and flappy peers (tests/soak/peers.py) and the hostile catalogue's peers."""
    peers = subprocess.Popen(
        [sys.executable, "-m", "tests.soak.peers", str(HEALTHY + EXTRA), str(FLAPPY), str(FLAP_SECONDS)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    hostile_peers = PeerProcess(hostile_material, tmp_path)
    try:
        assert peers.stdout is not None
        yield json.loads(peers.stdout.readline()), hostile_peers
    finally:
        hostile_peers.stop()
        if peers.stdin is not None:
            peers.stdin.close()
        peers.wait(timeout=10)


async def test_soak(
    tmp_path: Path,
    soak_peers: tuple[dict[str, list[int]], PeerProcess],
    smtp_sink_factory: Callable[..., SmtpSink],
) -> None:
    ports, hostile_peers = soak_peers
    exporter: ExporterProcess | None = None
    try:
        all_healthy = [f"127.0.0.1:{p}" for p in ports["healthy"]]
        healthy, extra = all_healthy[:HEALTHY], all_healthy[HEALTHY:]
        flappy = [f"127.0.0.1:{p}" for p in ports["flappy"]]
        hostile = [hostile_peers.target(h.name) for h in CATALOGUE]
        sinks = [smtp_sink_factory().target, smtp_sink_factory().target]
        config_a = config_text(healthy, flappy, hostile, sinks, [])
        config_b = config_text(healthy, flappy, hostile, sinks, extra)
        broken = config_a.replace("modules:", "modules: [", 1)
        config = tmp_path / "soak.yml"
        config.write_text(config_a)

        exporter = ExporterProcess("--config.file", str(config)).start()
        assert exporter.process is not None
        pid = exporter.process.pid
        unchanged = set(healthy + flappy + hostile + sinks)
        on_schedule = set(healthy + sinks)
        obs = Observations()
        reloads = {"valid": 0, "invalid": 0}
        started = time.monotonic()
        deadline = started + SOAK_SECONDS

        async with aiohttp.ClientSession() as session:

            async def scraper() -> None:
                while time.monotonic() < deadline:
                    async with session.get(exporter.url + "/metrics") as response:
                        assert response.status == 200
                        text = await response.text()
                    now = time.monotonic()
                    observe(text, obs, unchanged, now - started > WARMUP_SECONDS, now)
                    obs.stats.append((now - started, *proc_stats(pid)))
                    await asyncio.sleep(0.5)

            async def reloader() -> None:
                step = 0
                while time.monotonic() < deadline - 3:
                    text, kind = [(config_b, "valid"), (broken, "invalid"), (config_a, "valid")][step % 3]
                    temporary = tmp_path / "soak.yml.new"
                    temporary.write_text(text)
                    os.replace(temporary, config)  # atomic, as a ConfigMap update
                    async with session.post(exporter.url + "/-/reload") as response:
                        assert response.status == (200 if kind == "valid" else 500), await response.text()
                    async with session.get(exporter.url + "/metrics") as response:
                        gauge = "smtp_exporter_config_last_reload_successful " + (
                            "1" if kind == "valid" else "0"
                        )
                        assert gauge in await response.text()
                    reloads[kind] += 1
                    step += 1
                    await asyncio.sleep(2.5)
                config.write_text(config_a)
                async with session.post(exporter.url + "/-/reload") as response:
                    assert response.status == 200

            async def other_scrapers() -> None:
                """Concurrent scrapes of every other endpoint, OpenMetrics and gzip included."""
                headers = [
                    {"Accept": "application/openmetrics-text; version=1.0.0"},
                    {"Accept-Encoding": "gzip"},
                    {},
                ]
                paths = [
                    "/metrics",
                    "/",
                    "/config",
                    "/-/ready",
                    "/probe?target=" + healthy[0] + "&module=quick",
                ]
                step = 0
                while time.monotonic() < deadline:
                    async with session.get(
                        exporter.url + paths[step % len(paths)], headers=headers[step % len(headers)]
                    ) as response:
                        assert response.status == 200, paths[step % len(paths)]
                        await response.read()
                    step += 1
                    await asyncio.sleep(0.1)

            await asyncio.gather(scraper(), reloader(), other_scrapers())

        assert exporter.process.poll() is None, "the exporter died"
        stderr = "".join(exporter.stderr_lines)
        assert "Traceback" not in stderr
    finally:
        if exporter is not None:
            exporter.stop()

    warm = [s for s in obs.stats if s[0] >= WARMUP_SECONDS]
    assert len(warm) >= 10, "too few samples after warm-up"
    # Flat: the first tenth after warm-up against the last tenth (median of each), generously.
    tenth = max(len(warm) // 10, 1)
    rss_start = sorted(s[1] for s in warm[:tenth])[tenth // 2]
    rss_end = sorted(s[1] for s in warm[-tenth:])[tenth // 2]
    fds_start = max(s[2] for s in warm[:tenth])
    fds_end = min(s[2] for s in warm[-tenth:])
    report = (
        f"soak {SOAK_SECONDS:.0f}s, {len(unchanged)} targets (+{EXTRA} by reload), {obs.scrapes} scrapes, "
        f"reloads {reloads}, RSS {rss_start} -> {rss_end} KiB, fds {fds_start} -> {fds_end}, "
        f"max in flight {obs.max_in_flight:.0f}"
    )
    print(report)
    assert rss_end <= rss_start * 1.25 + 20 * 1024, report
    assert fds_end <= fds_start + 20, report
    assert not obs.regressions, obs.regressions[:10]
    assert not obs.missing, obs.missing[:10]
    assert reloads["valid"] >= 2 and reloads["invalid"] >= 1, reloads
    # On schedule: each healthy target's counter grew with the interval (70% of the ideal).
    elapsed = obs.final_at - obs.first_at
    expected = elapsed / INTERVAL
    late = {
        t: obs.final_probes.get(t, 0) - obs.first_probes.get(t, 0)
        for t in on_schedule
        if obs.final_probes.get(t, 0) - obs.first_probes.get(t, 0) < 0.7 * expected
    }
    assert not late, (
        f"{len(late)} healthy targets behind schedule ({expected:.0f} probes expected): {list(late.items())[:5]}"
    )
