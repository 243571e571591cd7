"""Running a module's posture checks after a conversation: the due ones, concurrently, each
bounded by the module's timeout; the others' last reports reused.

`PostureMemory` is a scheduled target's: its checks' last reports per series (the key is the MX
host under mx_mode each, None otherwise), a handful of small reports. `/probe` and the CLI pass
none: every enabled check runs at each request, as nothing is kept between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from smtp_exporter.config.posture import check_enabled
from smtp_exporter.config.schema import ModuleConfig
from smtp_exporter.model import CheckReport, ProbeResult
from smtp_exporter.posture import CHECKS
from smtp_exporter.posture.check import Check, CheckInput
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.pkix import Trust

log = logging.getLogger("smtp_exporter.posture")

# Probe starts are rounded to the scheduler's grid, so a check run at one probe and due exactly an
# interval later may be looked at a few milliseconds early: within this fraction of the interval
# it counts as due, or a 5m check on a 5m target would run every 10m.
DUE_SLACK = 0.05


class PostureMemory:
    """The last report of each check, per series of one scheduled target."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: dict[str | None, dict[str, CheckReport]] = {}

    def get(self, key: str | None, check: str) -> CheckReport | None:
        return self._kept.get(key, {}).get(check)

    def put(self, key: str | None, report: CheckReport) -> None:
        self._kept.setdefault(key, {})[report.check] = report

    def keep_only(self, keys: Collection[str | None]) -> None:
        """Forget the series not in `keys` (MX hosts gone from the domain)."""
        for key in [key for key in self._kept if key not in keys]:
            del self._kept[key]


async def run_posture(
    result: ProbeResult,
    domain: str,
    module: ModuleConfig,
    dns: PostureDNS,
    memory: PostureMemory | None,
    key: str | None = None,
    *,
    trust: Trust | None = None,
) -> tuple[CheckReport, ...]:
    """The posture reports of the series `key` after `result`, in CHECKS order; `trust` the
    module's compiled MTA-STS trust (needed when mta_sts is on)."""
    config = module.posture
    assert config is not None
    now = time.time()
    reports: dict[str, CheckReport] = {}
    due: list[tuple[Check, CheckReport | None]] = []
    for check in CHECKS:
        if not check_enabled(config, check.name):
            continue
        kept = memory.get(key, check.name) if memory is not None else None
        if kept is not None and now - kept.ran_at < config.interval * (1 - DUE_SLACK):
            reports[check.name] = kept
        else:
            due.append((check, kept))
    fresh = await asyncio.gather(
        *(
            _run_one(check, CheckInput(domain, result, module, config, dns, kept, now, trust))
            for check, kept in due
        )
    )
    for report in fresh:
        reports[report.check] = report
        if memory is not None:
            memory.put(key, report)
    return tuple(reports[check.name] for check in CHECKS if check.name in reports)


async def _run_one(check: Check, given: CheckInput) -> CheckReport:
    budget = given.module.timeout
    try:
        async with asyncio.timeout(budget):
            return await check.run(given)
    except TimeoutError:
        reason = f"did not finish within {budget:g}s"
    except Exception as exc:  # a bug: reported as the exporter's, other checks unharmed
        log.exception("posture check %s of %s failed on the exporter's side", check.name, given.domain)
        reason = f"local_error: {type(exc).__name__}: {exc}"
    return CheckReport(check.name, given.now, (), (reason,), (("error", reason),))
