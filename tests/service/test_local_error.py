"""An exporter that runs out of file descriptors: its probes fail with `local_error` (recorded
like any other result, never a crash, never stale series), and it recovers once descriptors
free up.

The exporter runs as a real process; its RLIMIT_NOFILE is lowered while it runs (prlimit)
below what it holds, the descriptors being held by probes of silent peers. A scrape connection
opened beforehand and kept alive reads /metrics meanwhile (accepting a new one needs a
descriptor too).
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.servers import scripted
from tests.servers.scripted import ScriptedServer
from tests.servers.smtp_sink import SmtpSink
from tests.service.conftest import ExporterProcess, sample_labels, sample_value, wait_for

SILENT_PEERS = 20


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_out_of_descriptors_is_local_error_and_recovers(
    write_config: Callable[[str], Path],
    smtp_sink_factory: Callable[..., SmtpSink],
    scripted_server: Callable[..., Awaitable[ScriptedServer]],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    healthy = smtp_sink_factory()
    silent = [await scripted_server(scripted.silence()) for _ in range(SILENT_PEERS)]
    targets = [f"  - {{target: '{healthy.target}', module: quick, interval: 500ms}}"]
    targets += [f"  - {{target: '{peer.target}', module: hold, interval: 3500ms}}" for peer in silent]
    path = write_config(
        "modules:\n"
        "  quick: {timeout: 400ms, ehlo: probe.test}\n"
        "  hold: {timeout: 3s, ehlo: probe.test}\n"
        "targets:\n" + "\n".join(targets) + "\n"
    )
    process = exporter_process("--config.file", str(path), "--log.format", "json")
    assert process.process is not None
    pid = process.process.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)

    connector = aiohttp.TCPConnector(limit=1)  # one connection, kept alive across scrapes
    async with aiohttp.ClientSession(connector=connector) as client:

        async def metrics() -> str:
            async with client.get(process.url + "/metrics") as response:
                assert response.status == 200
                return await response.text()

        async def healthy_success() -> bool:
            return sample_value(await metrics(), "smtp_probe_success", target=healthy.target) == 1

        async def peers_held() -> bool:
            return sum(peer.connections_open for peer in silent) >= SILENT_PEERS // 2

        await wait_for(healthy_success, "a first successful probe")
        await wait_for(peers_held, "the silent peers holding connections")

        # No descriptor left: the limit drops below what the exporter holds right now.
        held = _open_descriptors(pid)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (held - SILENT_PEERS // 4, limits[1]))

        async def local_errors() -> bool:
            text = await metrics()
            failed = [
                labels
                for labels in sample_labels(text, "smtp_probe_last_failure_info")
                if labels.get("reason") == "local_error"
            ]
            return bool(failed) and all(labels["phase"] == "connect" for labels in failed)

        await wait_for(local_errors, "local_error results in /metrics")
        text = await metrics()
        counted = [
            labels
            for labels in sample_labels(text, "smtp_probe_failures_total")
            if labels.get("reason") == "local_error"
        ]
        assert counted, "smtp_probe_failures_total{reason='local_error'} missing"
        assert all(sample_value(text, "smtp_probe_failures_total", **labels) for labels in counted)
        assert sample_labels(text, "smtp_probe_failures_total")  # series keep coming: none stale

        # Descriptors free up (the silent peers go away): probes succeed again.
        for peer in silent:
            await peer.stop()
        await asyncio.sleep(0.5)

        async def healthy_recovered() -> bool:
            text = await metrics()
            return sample_value(text, "smtp_probe_success", target=healthy.target) == 1 and not any(
                labels.get("target") == healthy.target
                for labels in sample_labels(text, "smtp_probe_last_failure_info")
            )

        await wait_for(healthy_recovered, "the healthy target succeeding again")

    assert process.process.poll() is None, "the exporter died"
    logs = "".join(process.stderr_lines)
    assert "probe crashed" not in logs
    assert "Traceback" not in logs
