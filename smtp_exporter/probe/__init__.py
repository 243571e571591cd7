"""The probe engine: `Prober` runs SMTP conversations and returns `ProbeResult`s."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from smtp_exporter.config.schema import IPProtocol, ModuleConfig
from smtp_exporter.delivery.check import DeliveryCheck
from smtp_exporter.model import (
    CheckReport,
    DeliveryInfo,
    Failure,
    FailureReason,
    MXInfo,
    Phase,
    PhaseResult,
    ProbeResult,
    Transcript,
    round_to_ns,
)
from smtp_exporter.posture.runner import PostureMemory, run_posture
from smtp_exporter.probe.connection import perf_counter
from smtp_exporter.probe.engine import Conversation, this_host_fqdn
from smtp_exporter.probe.errors import ProbeError
from smtp_exporter.probe.module import CompiledModule, compile_modules
from smtp_exporter.probe.tls import CertificateReader
from smtp_exporter.targets import Target

__all__ = ["CompiledModule", "PostureMemory", "Prober", "compile_modules"]


class Prober:
    """Runs probes of parsed targets with compiled modules (everything a probe needs is built
    at config load); holds what probes share across loads: parsed certificates, and this
    host's FQDN (the default EHLO name)."""

    def __init__(self) -> None:
        self._certificates = CertificateReader()
        self._fqdn: str | None = None

    async def _ehlo_name(self, module: ModuleConfig) -> str:
        if module.ehlo:
            return module.ehlo
        if self._fqdn is None:
            # getfqdn() may block on DNS: once per process, off the loop.
            self._fqdn = await asyncio.get_running_loop().run_in_executor(None, this_host_fqdn)
        return self._fqdn

    async def probe(
        self,
        target: Target,
        module: CompiledModule,
        target_text: str | None = None,
        *,
        timeout: float | None = None,
        family: int | None = None,
        posture: PostureMemory | None = None,
    ) -> ProbeResult:
        """One probe; its failures are in the result. `target_text`, the target as written,
        names the result (default: `str(target)`). `family` (4 or 6): only that family, as the
        scheduler probes each of an `ip_protocol: both` module's; without it such a module's
        probe is `probe_both`'s. The module's posture checks run after the conversation, those
        `posture` (the memory of a scheduled target's series of this family) ran recently reused."""
        text = str(target) if target_text is None else target_text
        if family is None and module.config.ip_protocol is IPProtocol.BOTH:
            result = await self.probe_both(target, module, text, timeout=timeout)
        else:
            result = await self._run(
                target, text, module, timeout=timeout, lookup_mx=module.config.mx, family=family
            )
        return await _with_posture(result, target, module, posture, None)

    async def probe_both(
        self, target: Target, module: CompiledModule, target_text: str, *, timeout: float | None
    ) -> ProbeResult:
        """`ip_protocol: both` in one result (/probe, the CLI): IPv6, then IPv4, within the one
        deadline (IPv6 gets at most half, so that a silent IPv6 path leaves IPv4 its turn). It
        succeeds when both do and lists both probes' attempts; its details (phases, failure,
        TLS, address) are the IPv4 probe's unless only the IPv6 one failed, as the failure of
        a probe is that of its attempt that ended last."""
        config = module.config
        deadline = config.total_timeout if timeout is None else min(timeout, config.total_timeout)
        started = perf_counter()
        lookup_mx = config.mx
        ip6 = await self._run(
            target, target_text, module, timeout=deadline / 2, lookup_mx=lookup_mx, family=6
        )
        left = max(deadline - (perf_counter() - started), 0.001)
        ip4 = await self._run(target, target_text, module, timeout=left, lookup_mx=lookup_mx, family=4)
        shown = ip6 if ip4.success and not ip6.success else ip4
        success = ip6.success and ip4.success
        return ProbeResult(
            target=target_text,
            module=module.name,
            success=success,
            start_timestamp=ip6.start_timestamp,
            duration_seconds=round_to_ns(perf_counter() - started),
            phases=shown.phases,
            failure=shown.failure,
            tls=shown.tls,
            server=shown.server,
            address=shown.address,
            mx=shown.mx,
            transcript=ip6.transcript.followed_by(ip4.transcript),
            attempts=ip6.attempts + ip4.attempts,
            fallback=success and (ip6.fallback or ip4.fallback),
            delivery=shown.delivery,
            pipelined=shown.pipelined,
        )

    async def probe_each_mx(
        self,
        target: Target,
        module: CompiledModule,
        target_text: str | None = None,
        *,
        timeout: float | None = None,
        family: int | None = None,
        posture: PostureMemory | None = None,
    ) -> list[ProbeResult]:
        """`mx_mode: each`: one result per MX host of the domain `target`, probed concurrently.
        When the MX lookup itself fails, one failed result without `mx` (its series is "").
        `family`: as for `probe` (the scheduler gives it for `ip_protocol: both`). Posture runs
        per series, as `probe`'s; `posture` is the memory of this family's series."""
        results = await self._each_mx(target, module, target_text, timeout=timeout, family=family)
        keys = [result.mx.host if result.mx is not None else "" for result in results]
        if posture is not None:
            posture.keep_only(keys)
        return list(
            await asyncio.gather(
                *(
                    _with_posture(result, target, module, posture, key)
                    for result, key in zip(results, keys, strict=True)
                )
            )
        )

    async def _each_mx(
        self,
        target: Target,
        module: CompiledModule,
        target_text: str | None,
        *,
        timeout: float | None,
        family: int | None,
    ) -> list[ProbeResult]:
        text = str(target) if target_text is None else target_text
        module_name = module.name
        config = module.config
        deadline = config.total_timeout if timeout is None else min(timeout, config.total_timeout)
        mx_deadline = min(deadline, config.timeout)
        dns = module.dns
        start_timestamp = time.time()
        started = perf_counter()
        try:
            async with asyncio.timeout(mx_deadline):
                hosts = await dns.mx_hosts(target.host)
        except ProbeError as exc:
            return [
                self._resolve_failure(text, module_name, start_timestamp, started, exc.reason, exc.message)
            ]
        except TimeoutError:
            message = f"MX lookup did not finish within the {mx_deadline:g}s deadline"
            return [
                self._resolve_failure(
                    text, module_name, start_timestamp, started, FailureReason.TIMEOUT, message
                )
            ]
        looked_up = perf_counter() - started
        return list(
            await asyncio.gather(
                *(
                    self._run(
                        Target(mx.host, target.port, None),
                        text,
                        module,
                        timeout=max(deadline - looked_up, 0.001),
                        mx=mx,
                        pre_resolve_seconds=looked_up,
                        family=family,
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
        module: CompiledModule,
        *,
        timeout: float | None,
        lookup_mx: bool = False,
        mx: MXInfo | None = None,
        pre_resolve_seconds: float = 0.0,
        family: int | None = None,
    ) -> ProbeResult:
        config = module.config
        conversation = Conversation(
            target=target,
            target_text=target_text,
            module_name=module.name,
            module=config,
            timeout=config.timeout if timeout is None else min(timeout, config.timeout),
            dns=module.dns,
            tls_context=module.tls_context,
            certificates=self._certificates,
            ehlo_name=await self._ehlo_name(config),
            sender=module.sender,
            mx=mx,
            lookup_mx=lookup_mx,
            pre_resolve_seconds=pre_resolve_seconds,
            family=family,
        )
        result = await conversation.run()
        if config.delivery is None:
            return result
        return await _with_delivery(result, conversation, module, target.host, timeout)


async def _with_delivery(
    result: ProbeResult, conversation: Conversation, module: CompiledModule, host: str, timeout: float | None
) -> ProbeResult:
    """The result of the SMTP part, followed by the delivery check's (when the SMTP part
    succeeded): its phases after the SMTP ones, its failure, its transcript, `delivery`. The IMAP
    part runs under delivery.timeout, or what is left of the probe's `timeout` when less."""
    delivery = module.config.delivery
    assert delivery is not None
    token = conversation.token
    accepted = conversation.session.message_accepted_at
    if not result.success or token is None or accepted is None:
        info = DeliveryInfo(conversation.message_id, "" if token is None else str(token), None)
        return dataclasses.replace(result, delivery=info)
    deadline = delivery.timeout
    if timeout is not None:
        deadline = min(deadline, max(timeout - (perf_counter() - conversation.t0), 0.001))
    check = DeliveryCheck(
        module, host, token=token, message_id=conversation.message_id, accepted_at=accepted, deadline=deadline
    )
    outcome = await check.run()
    return dataclasses.replace(
        result,
        success=outcome.failure is None,
        duration_seconds=round_to_ns(perf_counter() - conversation.t0),
        phases=(*result.phases, *outcome.phases),  # any Sequence (a kept result's are packed)
        failure=outcome.failure,
        transcript=result.transcript.followed_by(Transcript(outcome.events)),
        delivery=outcome.info,
    )


async def _with_posture(
    result: ProbeResult,
    target: Target,
    module: CompiledModule,
    memory: PostureMemory | None,
    key: str | None,
) -> ProbeResult:
    """`result` with the module's posture reports, without the presented chain (only the checks
    need it); the result itself (success, duration) as it was."""
    reports: tuple[CheckReport, ...] = ()
    if module.posture_dns is not None:
        reports = await run_posture(
            result, target.host, module.config, module.posture_dns, memory, key, trust=module.posture_trust
        )
    tls = result.tls
    if tls is not None and tls.chain:
        return dataclasses.replace(result, tls=dataclasses.replace(tls, chain=()), posture=reports)
    return dataclasses.replace(result, posture=reports) if reports else result
