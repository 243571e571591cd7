"""The probe engine: `Prober` runs SMTP conversations and returns `ProbeResult`s."""

from __future__ import annotations

import asyncio
import ssl
import time

from smtp_exporter.config.schema import DNSConfig, ModuleConfig, StartTLS, TLSConfig
from smtp_exporter.memo import remember
from smtp_exporter.model import (
    Failure,
    FailureReason,
    MXInfo,
    Phase,
    PhaseResult,
    ProbeResult,
    Transcript,
    round_to_ns,
)
from smtp_exporter.probe.connection import perf_counter
from smtp_exporter.probe.engine import Conversation, this_host_fqdn
from smtp_exporter.probe.errors import ProbeError
from smtp_exporter.probe.resolve import DNSClient
from smtp_exporter.probe.tls import CertificateReader, build_client_context
from smtp_exporter.targets import Target, TargetError, parse_target

__all__ = ["Prober", "TargetError"]

MAX_REMEMBERED_TARGETS = (
    100_000  # a config holds at most as many; /probe traffic can only evict (~35 MB at most)
)


class Prober:
    """Runs probes; holds what probes share: SSL contexts per `TLSConfig`, DNS clients per
    `DNSConfig`, parsed certificates, and this host's FQDN (the default EHLO name)."""

    def __init__(self) -> None:
        self._contexts: dict[TLSConfig, ssl.SSLContext] = {}
        self._dns: dict[DNSConfig, DNSClient] = {}
        self._certificates = CertificateReader()
        self._fqdn: str | None = None
        self._targets: dict[tuple[str, int], Target] = {}

    def target(self, text: str, port: int) -> Target:
        """parse_target, remembered: a scheduled target is parsed once, not at every probe (and
        a /probe target once per request, not by the handler and again by the probe)."""
        key = (text, port)
        target = self._targets.get(key)
        if target is None:  # /probe may name anything: bounded
            target = remember(self._targets, key, parse_target(text, port), limit=MAX_REMEMBERED_TARGETS)
        return target

    async def _ehlo_name(self, module: ModuleConfig) -> str:
        if module.ehlo:
            return module.ehlo
        if self._fqdn is None:
            # getfqdn() may block on DNS: once per process, off the loop.
            self._fqdn = await asyncio.get_running_loop().run_in_executor(None, this_host_fqdn)
        return self._fqdn

    def _dns_client(self, config: DNSConfig) -> DNSClient:
        client = self._dns.get(config)
        if client is None:
            client = self._dns[config] = DNSClient(config)
        return client

    def _tls_context(self, module: ModuleConfig) -> ssl.SSLContext | None:
        if not module.implicit_tls and module.starttls is StartTLS.NEVER:
            return None
        context = self._contexts.get(module.tls_config)
        if context is None:
            context = self._contexts[module.tls_config] = build_client_context(module.tls_config)
        return context

    def forget_caches(self) -> None:
        """Drop SSL contexts and DNS clients, e.g. after a reload changed the files behind them."""
        self._contexts.clear()
        self._dns.clear()

    async def probe(
        self, target: str, module_name: str, module: ModuleConfig, *, timeout: float | None = None
    ) -> ProbeResult:
        """One probe. Probe failures are in the result; raises TargetError for a target that
        cannot be parsed (callers validate targets before they schedule them)."""
        parsed = self.target(target, module.port)
        return await self._run(parsed, target, module_name, module, timeout=timeout, lookup_mx=module.mx)

    async def probe_each_mx(
        self, target: str, module_name: str, module: ModuleConfig, *, timeout: float | None = None
    ) -> list[ProbeResult]:
        """`mx_mode: each`: one result per MX host of the domain `target`, probed concurrently.
        When the MX lookup itself fails, one failed result without `mx`."""
        parsed = self.target(target, module.port)
        deadline = module.timeout if timeout is None else min(timeout, module.timeout)
        dns = self._dns_client(module.dns)
        start_timestamp = time.time()
        started = perf_counter()
        try:
            async with asyncio.timeout(deadline):
                hosts = await dns.mx_hosts(parsed.host)
        except ProbeError as exc:
            return [
                self._resolve_failure(target, module_name, start_timestamp, started, exc.reason, exc.message)
            ]
        except TimeoutError:
            message = f"MX lookup did not finish within the {deadline:g}s deadline"
            return [
                self._resolve_failure(
                    target, module_name, start_timestamp, started, FailureReason.TIMEOUT, message
                )
            ]
        looked_up = perf_counter() - started
        return list(
            await asyncio.gather(
                *(
                    self._run(
                        Target(mx.host, parsed.port, None),
                        target,
                        module_name,
                        module,
                        timeout=max(deadline - looked_up, 0.001),
                        mx=mx,
                        pre_resolve_seconds=looked_up,
                    )
                    for mx in hosts
                )
            )
        )

    @staticmethod
    def _resolve_failure(
        target: str,
        module_name: str,
        start_timestamp: float,
        started: float,
        reason: FailureReason,
        message: str,
    ) -> ProbeResult:
        duration = round_to_ns(perf_counter() - started)
        return ProbeResult(
            target=target,
            module=module_name,
            success=False,
            start_timestamp=start_timestamp,
            duration_seconds=duration,
            phases=(PhaseResult(Phase.RESOLVE, duration),) if reason is not FailureReason.TIMEOUT else (),
            failure=Failure(Phase.RESOLVE, reason, message),
            transcript=Transcript(
                [(started + duration, "*", f"probe failed in resolve: {reason.value}: {message}")], started
            ),
        )

    async def _run(
        self,
        target: Target,
        target_text: str,
        module_name: str,
        module: ModuleConfig,
        *,
        timeout: float | None,
        lookup_mx: bool = False,
        mx: MXInfo | None = None,
        pre_resolve_seconds: float = 0.0,
    ) -> ProbeResult:
        conversation = Conversation(
            target=target,
            target_text=target_text,
            module_name=module_name,
            module=module,
            timeout=module.timeout if timeout is None else min(timeout, module.timeout),
            dns=self._dns_client(module.dns),
            tls_context=self._tls_context(module),
            certificates=self._certificates,
            ehlo_name=await self._ehlo_name(module),
            mx=mx,
            lookup_mx=lookup_mx,
            pre_resolve_seconds=pre_resolve_seconds,
        )
        return await conversation.run()
