"""The running exporter: config, prober, scheduler, metrics and HTTP server on one event loop.

`Exporter` ties the parts together and owns the lifecycle: start, reload (SIGHUP,
`POST /-/reload`, or the config file or a certificate, key, CA or password file it names
changing on disk), the web config file and the files it names watched like the config file,
and a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from smtp_exporter.config.allowlist import TargetAllowlist
from smtp_exporter.config.errors import raise_errors
from smtp_exporter.config.loader import ConfigError, default_loaded
from smtp_exporter.config.loader import load as load_config_file
from smtp_exporter.config.render import effective_config_yaml
from smtp_exporter.config.schema import Config, ShardConfig
from smtp_exporter.config.target_files import expand
from smtp_exporter.config.web import (
    WebConfig,
    build_server_ssl_context,
    load_web_config,
    restart_needed,
    web_config_files,
)
from smtp_exporter.history import ResultHistory
from smtp_exporter.metrics import ExporterStats, HealthMetrics, MetricsStore
from smtp_exporter.posture.dane import warn_unless_validating
from smtp_exporter.probe import Prober
from smtp_exporter.scheduler import Scheduler, monitor_event_loop_lag
from smtp_exporter.snapshot import Snapshot, compile_snapshot
from smtp_exporter.targets import parse_listen_address as parse_listen_address
from smtp_exporter.web import WebBackend, create_app, runner_options
from smtp_exporter.web.exposure import UNRESTRICTED_PROBE_WARNING, exposed_addresses

log = logging.getLogger("smtp_exporter")

DEFAULT_LISTEN_ADDRESS = ":9725"
# How often the config file is checked for changes (Kubernetes swaps ConfigMap files in place).
CONFIG_WATCH_INTERVAL = 3.0


# Python's cyclic garbage collector, left at its defaults, was the largest single cost of a busy
# exporter (27% of its CPU at 2,000 targets, half at 10,000: benchmarks/RESULTS.md), and its full
# collections stopped the loop for hundreds of milliseconds, inflating the probe timings. Probes
# make little cyclic garbage (refcounting frees their objects), so collect far less often.
GC_THRESHOLDS = (50_000, 50, 1000)


def settle_heap() -> None:
    """Collect once, then move everything alive (config, modules, caches) out of the collector's
    sight: only objects made from now on are scanned by later collections."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardOverride:
    """`--shard.count` / `--shard.index`: they win over the config file's `shard` section."""

    count: int | None = None
    index: int | None = None

    def apply(self, config: Config) -> Config:
        if self.count is None and self.index is None:
            return config
        shard = ShardConfig(
            count=config.shard.count if self.count is None else self.count,
            index=config.shard.index if self.index is None else self.index,
        )
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise ConfigError(
                "command line",
                f"--shard.index must be from 0 to --shard.count - 1 ({shard.count - 1}), not {shard.index}",
            )
        return dataclasses.replace(config, shard=shard)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceOptions:
    config_file: str | None = None  # None: the embedded default config, never reloaded from disk
    listen_addresses: tuple[str, ...] = (DEFAULT_LISTEN_ADDRESS,)
    web_config: WebConfig = field(default_factory=WebConfig)
    web_config_file: str | None = None  # where `web_config` came from: watched, and reloaded
    shard: ShardOverride = field(default_factory=ShardOverride)
    watch_interval: float = CONFIG_WATCH_INTERVAL


def load(options: ServiceOptions, previous: Mapping[str, str] | None = None) -> Snapshot:
    """The snapshot of `options`' config (file or embedded default) with the command-line
    overrides; ConfigError. A broken target file does not raise: its errors are in the
    snapshot's `target_files`, its `previous` text (if any) loaded in its place."""
    loaded = load_config_file(options.config_file, previous) if options.config_file else default_loaded()
    return compile_snapshot(dataclasses.replace(loaded, config=options.shard.apply(loaded.config)))


def _file_signature(path: str) -> tuple[object, ...] | None:
    """What identifies the config file's current content: the file behind all symlinks, its
    inode, size and mtime. Kubernetes updates a ConfigMap volume by swapping a `..data` symlink,
    which changes the resolved path and inode but not the path we were given."""
    try:
        stat = os.stat(path)
        return (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        return None


class Exporter:
    def __init__(self, snapshot: Snapshot, options: ServiceOptions) -> None:
        self.options = options
        self.snapshot = snapshot  # the compiled config in force, swapped whole by a reload
        self.web_config = options.web_config
        self.prober = Prober()
        self.store = MetricsStore()
        self.stats = ExporterStats()
        self.health = HealthMetrics(self.stats)
        self.history = ResultHistory(snapshot.config.metrics.history_limit)
        self.scheduler = Scheduler(self.prober, self.store, self.stats, self.history)
        self.ready = False
        self.addresses: list[tuple[str, int]] = []  # (host, port) actually bound
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self._signature = self._config_signature()
        self._tls_context: ssl.SSLContext | None = None  # the one new TLS connections get
        self._web_signature = self._web_config_signature()
        self._exposed: tuple[str, ...] = ()  # the listen addresses with an unrestricted /probe

    @property
    def config(self) -> Config:
        return self.snapshot.config

    @property
    def allowlist(self) -> TargetAllowlist:
        return self.snapshot.allowlist

    async def start(self) -> None:
        """Start probing and serving; raises OSError when a listen address cannot be bound."""
        gc.set_threshold(*GC_THRESHOLDS)
        self.scheduler.apply(self.snapshot)
        self._record_target_files(self.snapshot)
        self._check_resolvers(self.snapshot)
        settle_heap()
        self._spawn(monitor_event_loop_lag(self.stats))
        runner = web.AppRunner(
            create_app(self.web_backend()),
            shutdown_timeout=self.config.scheduler.shutdown_grace_period,
            **runner_options(),  # type: ignore[arg-type]
        )
        await runner.setup()
        self._runner = runner
        ssl_context = self._tls_context = build_server_ssl_context(self.web_config)
        if ssl_context is not None and self.options.web_config_file:
            # Called in every handshake, with or without SNI: hands it the newest context, so a
            # renewed certificate is served without a restart.
            ssl_context.sni_callback = self._newest_tls_context
        for address in self.options.listen_addresses:
            host, port = parse_listen_address(address)
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
            await site.start()
        for sockname in runner.addresses:
            self.addresses.append((str(sockname[0]), int(sockname[1])))
        if self.options.config_file:
            self._spawn(self._watch_config_file(self.options.config_file))
        if self.options.web_config_file:
            self._spawn(self._watch_web_config(self.options.web_config_file))
        self.ready = True
        self._check_exposure()
        log.info(
            "exporter started",
            extra={
                "fields": {
                    "config": self.config.source,
                    "targets": self.stats.targets,
                    "listen": " ".join(f"{host}:{port}" for host, port in self.addresses),
                    "tls": ssl_context is not None,
                    "basic_auth": self.web_config.auth_required,
                }
            },
        )

    def web_backend(self) -> WebBackend:
        """What the HTTP server may read and call (the web layer sees nothing else of the service)."""
        return WebBackend(
            snapshot=lambda: self.snapshot,
            effective_config=effective_config_yaml,
            web_config=lambda: self.web_config,
            watches_web_config=self.options.web_config_file is not None,
            prober=self.prober,
            store=self.store,
            health=self.health,
            stats=self.stats,
            history=self.history,
            statuses=self.scheduler.status,
            find_series=self.scheduler.find_series,
            reload=self.reload,
            ready=lambda: self.ready,
        )

    def _spawn(self, coroutine: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        """Load the config again and apply it; on error keep the running one and raise ConfigError."""
        async with self._reload_lock:
            try:
                snapshot = await asyncio.to_thread(load, self.options, self.snapshot.target_files.texts)
            except ConfigError as exc:
                self.stats.reload_failed()
                log.error(
                    "config reload failed, keeping the running config", extra={"fields": {"error": str(exc)}}
                )
                raise
            self.history.resize(snapshot.config.metrics.history_limit)
            self.scheduler.apply(snapshot)
            running, self.snapshot = self.snapshot, snapshot
            if (snapshot.files, snapshot.target_files.patterns) != (
                running.files,
                running.target_files.patterns,
            ):  # the new config names other files: watch those
                self._signature = self._config_signature()
            broken = self._record_target_files(snapshot)
            self._check_resolvers(snapshot)
            settle_heap()
            self._check_exposure()
            log.info(
                "config reloaded",
                extra={"fields": {"config": snapshot.config.source, "targets": self.stats.targets}},
            )
            # Applied, the other files included; the caller (POST /-/reload) still hears of it.
            raise_errors(broken)

    def _check_resolvers(self, snapshot: Snapshot) -> None:
        """The start-up half of DANE's resolver self-check: a DANE module whose resolver does not
        validate is logged now, in the background, not only at its first probe's posture run."""
        clients = [
            (module.name, module.posture_dns)
            for module in snapshot.modules.values()
            if module.posture_dns is not None
            and module.config.posture is not None
            and module.config.posture.dane
        ]
        if clients:
            self._spawn(warn_unless_validating(clients))

    def _record_target_files(self, snapshot: Snapshot) -> tuple[ConfigError, ...]:
        """The reload gauges after a load was applied: failed when a target file is broken (its
        previous contents running), which is logged; returns its errors."""
        files = snapshot.target_files
        self.stats.target_files = files.loaded
        if not files.errors:
            self.stats.reload_succeeded()
            return ()
        self.stats.reload_failed()
        log.error(
            "target file load failed, keeping its previous targets",
            extra={
                "fields": {
                    "files": " ".join(sorted({error.file for error in files.errors})),
                    "error": "\n".join(str(error) for error in files.errors),
                }
            },
        )
        return files.errors

    def _check_exposure(self) -> None:
        """Warn once when `/probe` becomes unrestricted on a non-loopback address: at start, or
        when a reload of the config or the web config removes the last restriction."""
        exposed = exposed_addresses(self.options.listen_addresses, self.allowlist, self.web_config)
        if exposed and not self._exposed:
            log.warning(UNRESTRICTED_PROBE_WARNING, extra={"fields": {"listen": " ".join(exposed)}})
        self._exposed = exposed

    def request_reload(self) -> None:
        """Reload in the background (SIGHUP); errors are logged and shown by the reload gauge."""
        self._spawn(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ConfigError):
            await self.reload()

    def _config_signature(self) -> tuple[object, ...] | None:
        """The config file's signature, those of the files its modules name (certificates,
        keys, CAs, passwords), in the running snapshot, and last the files its target_files
        globs find now with theirs; None while the config file is missing."""
        path = self.options.config_file
        signature = _file_signature(path) if path else None
        if signature is None:
            return None
        found = tuple((name, _file_signature(name)) for name in expand(self.snapshot.target_files.patterns))
        return (signature, *(_file_signature(name) for name in self.snapshot.files), found)

    async def _watch_config_file(self, path: str) -> None:
        """Reload when the config file or a file it names changes. A missing config file is a
        swap in progress (or an error the next reload reports); a named file that goes missing
        or breaks is reloaded like any change, and refused: the running snapshot stays, and a
        restored or rotated file is a change again."""
        while True:
            await asyncio.sleep(self.options.watch_interval)
            signature = self._config_signature()
            if signature is None or signature == self._signature:
                continue
            files = self.snapshot.files
            before = self._signature or (None, *(None for _ in files), ())
            names = (path, *files, "target_files")
            changed = [name for name, old, new in zip(names, before, signature, strict=False) if old != new]
            self._signature = signature
            log.info(
                "a file named by the config changed on disk, reloading"
                if changed and changed[0] != path
                else "config file changed on disk, reloading",
                extra={"fields": {"config": path, "files": " ".join(changed)}},
            )
            await self._reload_quietly()

    def _web_config_signature(self) -> tuple[object, ...] | None:
        path = self.options.web_config_file
        if path is None:
            return None
        return tuple(_file_signature(name) for name in (path, *web_config_files(self.web_config)))

    def _newest_tls_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        newest = self._tls_context
        if newest is not None and newest is not context:
            connection.context = newest

    async def _watch_web_config(self, path: str) -> None:
        """The exporter-toolkit's promise, checked every watch interval rather than on every
        request: a changed web config file, certificate, key or client CA file applies to the
        connections and requests that follow. A file that fails to load changes nothing."""
        while True:
            await asyncio.sleep(self.options.watch_interval)
            signature = self._web_config_signature()
            if signature == self._web_signature or signature is None or None in signature:
                continue  # unchanged, or a file missing: a swap in progress
            self._web_signature = signature
            try:
                web_config, context = await asyncio.to_thread(_load_web_config, path, self.web_config)
            except (ConfigError, OSError, ValueError) as exc:
                self.stats.web_config_reload_successful = False
                log.error(
                    "web config reload failed, keeping the running one",
                    extra={"fields": {"web_config": path, "error": str(exc)}},
                )
                continue
            self.web_config = web_config
            self._tls_context = context
            self.stats.web_config_reload_successful = True
            self._web_signature = self._web_config_signature()
            self._check_exposure()
            log.info(
                "web config reloaded",
                extra={
                    "fields": {
                        "web_config": path,
                        "tls": context is not None,
                        "basic_auth": web_config.auth_required,
                    }
                },
            )

    async def stop(self) -> None:
        """Stop scheduling, let running probes finish within the grace period, close the server."""
        self.ready = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        grace = self.config.scheduler.shutdown_grace_period
        log.info("stopping", extra={"fields": {"grace_period_seconds": grace}})
        await self.scheduler.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _load_web_config(path: str, running: WebConfig) -> tuple[WebConfig, ssl.SSLContext | None]:
    """The web config at `path` and its TLS context, if a running server can take them."""
    web_config = load_web_config(path)
    reason = restart_needed(running, web_config)
    if reason is not None:
        raise ConfigError(path, f"{reason}: restart smtp-exporter to apply it")
    return web_config, build_server_ssl_context(web_config)
