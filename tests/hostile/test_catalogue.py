"""Every hostile peer of the catalogue: the right phase and reason, inside the deadline, with
the socket closed, memory bounded and no secret in the result."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable

import pytest

from smtp_exporter.config.schema import ModuleConfig
from smtp_exporter.model import ProbeResult
from smtp_exporter.presentation import probe_json
from smtp_exporter.probe import Prober
from tests.hostile.catalogue import CATALOGUE, TIMEOUT, Hostile
from tests.hostile.certs import Material
from tests.hostile.conftest import PeerProcess, module_for, open_fds, secret_forms
from tests.probe.common import compiled
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.smtp_sink import SmtpSink

# The probe may overrun its deadline only by scheduling noise (and tracemalloc's slowdown).
DEADLINE_MARGIN = 1.0
MEMORY_LIMIT = 4 << 20  # bytes allocated by Python at the peak of one probe


def _params() -> list[object]:
    return [
        pytest.param(h, id=h.name, marks=[pytest.mark.xfail(strict=True, reason=h.bug)] if h.bug else [])
        for h in CATALOGUE
    ]


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 25
    assert len({h.name for h in CATALOGUE if h.phase is not None}) >= 25


def describe(result: ProbeResult) -> str:
    failure = result.failure
    outcome = "success" if failure is None else f"{failure.phase}/{failure.reason}: {failure.message}"
    return f"{outcome} after {result.duration_seconds:.3f}s"


@pytest.mark.parametrize("hostile", _params())
async def test_hostile_peer(hostile: Hostile, hostile_peers: PeerProcess, hostile_material: Material) -> None:
    module = module_for(hostile, hostile_material)
    accepted_before = hostile_peers.status(hostile.name)["accepted"]
    fds_before = open_fds()
    loop = asyncio.get_running_loop()

    for _ in range(hostile.attempts):
        tracemalloc.start()
        try:
            started = loop.time()
            result = await Prober().probe(*compiled(hostile_peers.target(hostile.name), hostile.name, module))
            elapsed = loop.time() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # What the operator reads in the alert.
        if hostile.phase is None:
            assert result.success, describe(result)
        else:
            assert result.failure is not None, describe(result)
            assert result.failure.phase in hostile.phases, describe(result)
            assert result.failure.reason == hostile.reason, describe(result)
            assert result.failure.message.isprintable() and len(result.failure.message) < 1024
        # The deadline holds, whatever the peer does.
        assert elapsed < TIMEOUT + DEADLINE_MARGIN, describe(result)
        assert result.duration_seconds < TIMEOUT + DEADLINE_MARGIN

    # The peer saw our sockets close, and no descriptor stayed open on our side.
    accepted = accepted_before + hostile.attempts
    status = await asyncio.to_thread(hostile_peers.wait_all_closed, hostile.name, accepted)
    assert status["accepted"] == accepted, status
    assert status["open"] == 0, f"the probe left its connection open: {status}"
    for _ in range(100):
        if open_fds() <= fds_before:
            break
        await asyncio.sleep(0.02)
    assert open_fds() <= fds_before
    # Bounded memory: what the peer sends is never buffered without bound.
    assert peak < MEMORY_LIMIT, f"peak {peak} bytes"
    # What the result keeps from the server is bounded too, and no secret is in it.
    document = json.dumps(probe_json(result))
    assert len(document) < 256 * 1024
    for secret in secret_forms():
        assert secret not in document
    if result.server.banner is not None:
        assert len(result.server.banner) <= 520
    assert len(result.server.extensions) <= 64
    assert all(len(params) <= 32 for _, params in result.server.extensions)


HEALTHY = Hostile("healthy", "a normal server", "", None, None)


async def _probe_loop(
    prober: Prober, target: str, module: ModuleConfig, stop: asyncio.Event, out: list[ProbeResult]
) -> None:
    while not stop.is_set():
        out.append(await prober.probe(*compiled(target, "healthy", module)))


async def test_healthy_targets_unaffected_by_hostile_ones(
    hostile_peers: PeerProcess,
    hostile_material: Material,
    smtp_sink_factory: Callable[..., SmtpSink],
    smtp_server_factory: Callable[..., AiosmtpdServer],
) -> None:
    """Every hostile peer probed at once (three rounds), in the event loop that also probes two
    healthy servers without pause: the healthy probes all succeed, with latencies of the same
    order as when they run alone."""
    prober = Prober()  # one prober, as in the exporter: shared contexts and caches
    healthy = [smtp_sink_factory().target, smtp_server_factory().target]

    module = module_for(HEALTHY, hostile_material, timeout=5.0)
    baseline = [
        await prober.probe(*compiled(target, "healthy", module)) for _ in range(10) for target in healthy
    ]
    assert all(r.success for r in baseline)
    baseline_p50 = statistics.median(r.duration_seconds for r in baseline)

    stop = asyncio.Event()
    during: list[ProbeResult] = []
    workers = [
        asyncio.create_task(_probe_loop(prober, target, module, stop, during))
        for target in healthy
        for _ in range(2)
    ]
    started = time.monotonic()
    hostile_results: list[ProbeResult] = []
    for _ in range(3):
        hostile_results += await asyncio.gather(
            *(
                prober.probe(*compiled(hostile_peers.target(h.name), h.name, module_for(h, hostile_material)))
                for h in CATALOGUE
            )
        )
    hostile_elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*workers)

    assert hostile_elapsed < 3 * (TIMEOUT + DEADLINE_MARGIN) + 2
    assert all(r.duration_seconds < TIMEOUT + DEADLINE_MARGIN for r in hostile_results)
    failed = [describe(r) for r in during if not r.success]
    assert not failed, failed
    assert len(during) >= 20
    durations = sorted(r.duration_seconds for r in during)
    p99 = durations[int(len(durations) * 0.99) - 1]
    # Generous on purpose (machines are noisy): an order of magnitude or a quarter second.
    assert p99 < max(20 * baseline_p50, 0.25), f"p99 {p99:.4f}s vs baseline median {baseline_p50:.4f}s"
    assert durations[-1] < 1.0
