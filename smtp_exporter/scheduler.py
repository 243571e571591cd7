"""The scheduler: probes every configured target of this shard on its own interval.

Timing is driven by one `loop.call_at` timer per step of a start grid that has targets due,
not by a timer or a sleeping task per target, so an idle target costs a place in one list; a
task exists only while its probe runs.

- A target's probes happen at `phase + k * interval` on the wall clock, where `phase` is a
  stable hash of (target, module) spread over the interval: restarts, reloads and a thousand
  targets never fire in one burst, and the schedule is the same after a restart. Start times
  are rounded to the grid, whose step is sized from the probe rate (`start_grid`), so that
  neighbours share loop iterations (and a timer).
- A target never has two probes in flight: when its time comes while the previous probe still
  runs (or still waits for a concurrency slot), the new one is skipped and counted.
- At most `scheduler.max_concurrency` probes run at once; the others wait (and are counted).
- `apply(config)` (start and reload) keeps the targets whose identity (target, module, labels,
  mx_mode) is unchanged, with their schedule, counters and histograms; starts new ones; drops
  removed ones and their series.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Iterator

from smtp_exporter.config.schema import IPProtocol, MXMode
from smtp_exporter.history import ResultHistory
from smtp_exporter.metrics import Buckets, ExporterStats, MetricsStore, SeriesState
from smtp_exporter.metrics.health import LAG_INTERVAL
from smtp_exporter.model import ProbeResult
from smtp_exporter.presentation import transcript_lines
from smtp_exporter.probe import PostureMemory, Prober
from smtp_exporter.snapshot import CompiledTarget, Snapshot
from smtp_exporter.status import TargetStatus

log = logging.getLogger("smtp_exporter.scheduler")

# The identity of a scheduled target: what must not change for its state to carry over a reload.
JobKey = tuple[str, str, tuple[tuple[str, str], ...], MXMode]
# One series of a job: (mx_host in mx_mode each, else None; family under ip_protocol both, else None).
SeriesKey = tuple[str | None, int | None]
BOTH_FAMILIES: tuple[int | None, ...] = (6, 4)  # ip_protocol both: each probed as its own series


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8")).digest()[:8], "big")


def shard_of(target: str, count: int) -> int:
    """The shard (0 .. count-1) that probes `target` (the target string as written in the config).

    `int.from_bytes(hashlib.blake2b(target.encode()).digest()[:8], "big") % count`: the first
    8 bytes of the target's BLAKE2b (512-bit) digest as a big-endian integer, modulo `count`.
    Stable across processes, restarts, Python versions and machines, so K exporters started
    with `--shard.count K --shard.index 0..K-1` and the same config split the targets with
    each target in exactly one shard.
    """
    return _hash64(target) % count


# Probe start times fall on a grid (in the loop's clock), and each step with targets due has one
# timer. Targets whose phases round to the same step start in the same loop iteration and go
# through their conversations together, so the loop serves their network events in batches,
# which saves CPU; but a reply that arrives while the loop works through a batch waits, and
# that wait is counted in its phase's duration. The error grows with the batch, not with the
# step: so the step is sized from the shard's probe rate to hold about PROBES_PER_STEP probes
# (10 ms at 1,000 probes/s, 60 ms at 10,000 targets every minute), within [MIN_START_GRID,
# MAX_START_GRID], a batch small enough to keep the phase timings' error within its target
# while keeping most of the saving (docs/architecture.md has the figures).
PROBES_PER_STEP = 10
MIN_START_GRID = 0.01
MAX_START_GRID = 0.1


def start_grid(probes_per_second: float) -> float:
    """The start step for a shard that starts `probes_per_second` probes a second on average, in
    whole milliseconds (the loop's clock moves in them), so that a reload adding or removing a
    few targets rarely moves every job to another grid."""
    if probes_per_second <= 0:
        return MAX_START_GRID
    return round(min(MAX_START_GRID, max(MIN_START_GRID, PROBES_PER_STEP / probes_per_second)), 3)


def schedule_phase(target: str, module: str) -> float:
    """Where in its interval a target is probed, as a fraction in [0, 1): a stable hash."""
    return _hash64(f"{target}\0{module}") / 2.0**64


class _Job:
    """One scheduled target: its config, next start, running probe and series."""

    __slots__ = ("compiled", "config", "key", "next_at", "posture", "removed", "series", "task")

    def __init__(self, key: JobKey, compiled: CompiledTarget) -> None:
        self.key = key
        self.compiled = compiled  # parsed target and compiled module, from the running snapshot
        self.config = compiled.config
        self.next_at = 0.0  # in the loop's clock, unrounded: the grid step it is due at is rounded
        self.task: asyncio.Task[None] | None = None
        self.removed = False
        # One series, or one per MX host in mx_mode each and/or per family under ip_protocol
        # both (each knows its mx_host and family): a tuple, since a dict costs 224 bytes a
        # target for what is nearly always a single entry.
        self.series: tuple[SeriesState, ...] = ()
        # Its posture checks' last reports, for a module with posture checks only (a dict and a
        # memory would cost every other target about 300 bytes): one memory per family (None
        # unless ip_protocol both), each keyed by mx_host as the series are.
        self.posture: dict[int | None, PostureMemory] | None = None

    def series_labels(self, key: SeriesKey) -> tuple[tuple[str, str], ...]:
        mx_host, family = key
        own = [("target", self.config.target), ("module", self.config.module)]
        if mx_host is not None:
            own.append(("mx_host", mx_host))
        if family is not None:
            own.append(("ip_protocol", str(family)))
        return (*own, *self.config.labels)

    def find(self, mx_host: str | None, family: int | None) -> SeriesState | None:
        for state in self.series:
            if state.mx_host == mx_host and state.ip_protocol == family:
                return state
        return None


class Scheduler:
    """Runs the scheduled probes of one `Snapshot` on the running event loop."""

    def __init__(
        self, prober: Prober, store: MetricsStore, stats: ExporterStats, history: ResultHistory
    ) -> None:
        self._prober = prober
        self._store = store
        self._stats = stats
        self._history = history
        self._jobs: dict[JobKey, _Job] = {}
        # Grid step (next_at / self._grid, rounded) -> the jobs due at it, and the step's timer.
        # A job rescheduled by a reload, or removed, stays in its old step's list: `_fire`
        # skips it there (its next_at no longer rounds to that step).
        self._due: dict[int, list[_Job]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._grid = MAX_START_GRID
        self._semaphore = asyncio.Semaphore(1)
        self._max_concurrency = 0
        self._buckets = Buckets(())
        self._delivery_buckets = Buckets(())
        self._phase_histograms = False
        self._blackbox_names = False
        self._stopping = False

    # -- configuration ------------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Start probing the targets of `snapshot` that belong to its shard (at start and on reload)."""
        loop = asyncio.get_running_loop()
        config = snapshot.config
        shard = config.shard
        wanted: dict[JobKey, CompiledTarget] = {}
        for compiled in snapshot.targets:
            target = compiled.config
            if shard.count == 1 or shard_of(target.target, shard.count) == shard.index:
                wanted[(target.target, target.module, target.labels, target.mx_mode)] = compiled

        if config.scheduler.max_concurrency != self._max_concurrency:
            # Probes holding or awaiting a slot of the old semaphore keep using it.
            self._max_concurrency = config.scheduler.max_concurrency
            self._semaphore = asyncio.Semaphore(self._max_concurrency)
        metrics = config.metrics
        settings = (
            metrics.histogram_buckets,
            metrics.phase_histograms,
            metrics.blackbox_names,
            metrics.delivery_histogram_buckets,
        )
        if settings != (
            self._buckets.bounds,
            self._phase_histograms,
            self._blackbox_names,
            self._delivery_buckets.bounds,
        ):
            self._buckets = Buckets(metrics.histogram_buckets)
            self._delivery_buckets = Buckets(metrics.delivery_histogram_buckets)
            self._phase_histograms = metrics.phase_histograms
            self._blackbox_names = metrics.blackbox_names
            for job in self._jobs.values():
                for state in job.series:
                    self._store.reconfigure(
                        state,
                        buckets=self._buckets,
                        phase_histograms=self._phase_histograms,
                        blackbox_names=self._blackbox_names,
                        delivery_buckets=self._delivery_buckets,
                    )

        for key in [key for key in self._jobs if key not in wanted]:
            self._remove(self._jobs.pop(key))
        grid = start_grid(sum(1 / compiled.config.interval for compiled in wanted.values()))
        if grid != self._grid:
            self._regrid(grid, loop)
        for key, compiled in wanted.items():
            existing = self._jobs.get(key)
            if existing is None:
                job = self._jobs[key] = _Job(key, compiled)
                self._schedule_first(job, loop)
                continue
            job = existing
            interval_changed = job.config.interval != compiled.config.interval
            job.config = compiled.config
            job.compiled = compiled
            if interval_changed:
                self._schedule_first(job, loop)
        self._stats.targets = len(self._jobs)

    def _schedule_first(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        if self._stopping:
            return
        interval = job.config.interval
        phase = schedule_phase(job.config.target, job.config.module)
        delay = (phase * interval - time.time()) % interval
        self._schedule(job, loop.time() + delay, loop)

    def _regrid(self, grid: float, loop: asyncio.AbstractEventLoop) -> None:
        """Move every job to a grid of another step, each keeping its next start."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._due.clear()
        self._grid = grid
        if not self._stopping:
            for job in self._jobs.values():
                self._schedule(job, job.next_at, loop)

    def _schedule(self, job: _Job, at: float, loop: asyncio.AbstractEventLoop) -> None:
        job.next_at = at
        grid = self._grid
        step = round(at / grid)
        due = self._due.get(step)
        if due is None:
            self._due[step] = [job]
            self._timers[step] = loop.call_at(step * grid, self._fire, step)
        else:
            due.append(job)

    def _remove(self, job: _Job) -> None:
        job.removed = True
        if job.task is not None:
            job.task.cancel()
        for state in job.series:
            self._store.remove(state)

    # -- running probes -----------------------------------------------------------------------

    def _fire(self, step: int) -> None:
        del self._timers[step]
        loop = asyncio.get_running_loop()
        now = loop.time()
        grid = self._grid
        for job in self._due.pop(step):
            if job.removed or round(job.next_at / grid) != step:
                continue
            interval = job.config.interval
            next_at = job.next_at + interval
            if next_at <= now:  # the loop fell more than an interval behind: keep the phase
                next_at += math.ceil((now - next_at) / interval) * interval
                if next_at <= now:
                    next_at += interval
            self._schedule(job, next_at, loop)
            if job.task is not None:
                self._stats.probes_skipped_total += 1
                log.debug(
                    "probe skipped: the previous one is still running",
                    extra={"fields": {"target": job.config.target, "module": job.config.module}},
                )
                continue
            job.task = loop.create_task(self._run(job))

    async def _run(self, job: _Job) -> None:
        stats = self._stats
        semaphore = self._semaphore
        try:
            if semaphore.locked():
                stats.probes_waited_total += 1
                stats.probes_waiting += 1
                try:
                    await semaphore.acquire()
                finally:
                    stats.probes_waiting -= 1
            else:
                await semaphore.acquire()
            stats.probes_in_flight += 1
            try:
                compiled = job.compiled
                results: list[tuple[int | None, ProbeResult]]
                if compiled.module.config.ip_protocol is IPProtocol.BOTH:
                    ran = await asyncio.gather(*(self._probe(job, family) for family in BOTH_FAMILIES))
                    results = [
                        (family, result)
                        for family, run in zip(BOTH_FAMILIES, ran, strict=True)
                        for result in run
                    ]
                else:
                    results = [(None, result) for result in await self._probe(job, None)]
            finally:
                stats.probes_in_flight -= 1
                semaphore.release()
            if not job.removed:
                self._record(job, results)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug, not a probe failure: keep every other target running
            log.exception(
                "probe crashed", extra={"fields": {"target": job.config.target, "module": job.config.module}}
            )
        finally:
            job.task = None

    async def _probe(self, job: _Job, family: int | None) -> list[ProbeResult]:
        """One probe of the target, or one per MX host in mx_mode each; of `family` only, if given."""
        compiled = job.compiled
        prober, target, module, text = self._prober, compiled.target, compiled.module, compiled.config.target
        posture = None
        if compiled.module.posture_dns is not None:
            memories = job.posture
            if memories is None:
                memories = job.posture = {}
            posture = memories.setdefault(family, PostureMemory())
        if compiled.config.mx_mode is MXMode.EACH:
            return await prober.probe_each_mx(target, module, text, family=family, posture=posture)
        return [await prober.probe(target, module, text, family=family, posture=posture)]

    def _record(self, job: _Job, results: list[tuple[int | None, ProbeResult]]) -> None:
        each = job.config.mx_mode is MXMode.EACH
        recorded: list[SeriesState] = []
        for family, result in results:
            mx_host = (result.mx.host if result.mx is not None else "") if each else None
            if any(state.mx_host == mx_host and state.ip_protocol == family for state in recorded):
                continue  # the same MX host twice in one lookup: keep the first
            state = job.find(mx_host, family)
            if state is None:
                state = SeriesState(
                    job.series_labels((mx_host, family)),
                    buckets=self._buckets,
                    phase_histograms=self._phase_histograms,
                    blackbox_names=self._blackbox_names,
                    delivery_buckets=self._delivery_buckets,
                )
            previous = state.latest
            kept = self._store.record(state, result)
            self._history.add(
                kept, scheduled=True, transcript=result.transcript, mx_host=mx_host, ip_protocol=family
            )
            _log_result(previous, result, mx_host, family)
            recorded.append(state)
        series = tuple(recorded)
        if series != job.series:  # series compare by identity
            for state in job.series:
                if state not in series:  # an MX host (or family) gone from the results: its series goes
                    self._store.remove(state)
            job.series = series

    # -- status and shutdown ------------------------------------------------------------------

    def status(self) -> Iterator[TargetStatus]:
        # next_at is in the loop's clock; the page shows wall-clock times.
        offset = time.time() - asyncio.get_running_loop().time()
        for job in self._jobs.values():
            yield TargetStatus(
                job.config,
                job.compiled.target,
                job.task is not None,
                job.next_at + offset,
                job.series,
            )

    def find_series(
        self, target: str, module: str, mx_host: str | None = None, ip_protocol: int | None = None
    ) -> SeriesState | None:
        for job in self._jobs.values():
            if job.config.target == target and job.config.module == module:
                each = job.config.mx_mode is MXMode.EACH
                both = job.compiled.module.config.ip_protocol is IPProtocol.BOTH
                return job.find(mx_host if each else None, ip_protocol if both else None)
        return None

    async def stop(self, grace_period: float) -> None:
        """Stop scheduling; let running probes finish for up to `grace_period` seconds, then cancel them."""
        self._stopping = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._due.clear()
        running = [job.task for job in self._jobs.values() if job.task is not None]
        if not running:
            return
        _done, pending = await asyncio.wait(running, timeout=grace_period)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _state(result: ProbeResult | None) -> tuple[str, str, str]:
    if result is None:
        return ("unknown", "", "")
    if result.failure is None:
        return ("up", "", "")
    return ("down", result.failure.phase.value, result.failure.reason.value)


def _log_result(
    previous: ProbeResult | None, result: ProbeResult, mx_host: str | None, family: int | None
) -> None:
    """One info line when a target's state changes (up/down, or the failure's phase or reason)."""
    before, after = _state(previous), _state(result)
    changed = before != after and not (previous is None and result.success)
    if not changed and not log.isEnabledFor(logging.DEBUG):
        return
    fields: dict[str, object] = {"target": result.target, "module": result.module}
    if mx_host is not None:
        fields["mx_host"] = mx_host
    if family is not None:
        fields["ip_protocol"] = family
    if changed:
        fields["from"] = before[0]
        fields["to"] = after[0]
        if result.failure is not None:
            fields["phase"] = after[1]
            fields["reason"] = after[2]
            fields["error"] = result.failure.message
        log.info("target state changed", extra={"fields": fields})
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "probe transcript",
            extra={"fields": {**fields, "success": result.success, "transcript": transcript_lines(result)}},
        )


async def monitor_event_loop_lag(stats: ExporterStats) -> None:
    """Forever: sleep LAG_INTERVAL and record how much later than asked the loop woke up.

    Measured with perf_counter(): uvloop's loop.time() moves in whole milliseconds, which would
    show sub-millisecond lag as 0 and everything else in 1 ms steps."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(LAG_INTERVAL)
        stats.record_lag(max(0.0, time.perf_counter() - start - LAG_INTERVAL))
