"""Run inside a private network namespace by tests/probe/test_postfix_tls.py: a real Postfix
smtpd with STARTTLS behind a delay line (tests/servers/delay_line.py), probed PROBES times on the
loop asked for. Checks each probe, then prints the `ehlo` and `ehlo_tls` durations (seconds) as
JSON on stdout.

    python -m tests.probe.postfix_over_delay DELAY asyncio|uvloop tickets|no-ticket-cache
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from smtp_exporter.model import Phase
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module, names, trusting
from tests.servers.delay_line import CLIENT, SERVER, DelayLine
from tests.servers.postfix_smtpd import PostfixSmtpd
from tests.servers.tls import TestCA

PROBES = 20

# Postfix's settings for each case. "tickets": Debian's default, a TLS session cache, so smtpd
# sends resumable session tickets as in production. "no-ticket-cache": a cache timeout of 0,
# after which it still sends a ticket, a smaller one, and another after our EHLO arrives.
SESSION_CACHES = {
    "tickets": {"smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache"},
    "no-ticket-cache": {"smtpd_tls_session_cache_timeout": "0"},
}


async def probe_all(postfix: PostfixSmtpd, ca: TestCA) -> dict[str, list[float]]:
    settings = module(port=postfix.port, tls_config=trusting(ca, server_name="mail.test"))
    durations: dict[str, list[float]] = {"ehlo": [], "ehlo_tls": []}
    for _ in range(PROBES):
        result = await Prober().probe(*compiled(postfix.target, "m", settings))
        assert result.success, describe(result)
        assert names(result) == ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"]
        assert result.tls is not None and result.tls.verified and result.tls.version == "TLSv1.3"
        for name, series in durations.items():
            phase = result.phase(Phase(name))
            assert phase is not None and phase.reply_code == 250, describe(result)
            series.append(phase.duration_seconds)
    return durations


def main() -> None:
    delay, loop, cache = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    ca = TestCA(Path(tempfile.mkdtemp(prefix="ca-")))
    # inet_interfaces: the listener's address is on tun0, not loopback.
    main_cf = {"inet_interfaces": "all", **SESSION_CACHES[cache]}
    with DelayLine(delay), PostfixSmtpd(host=SERVER, tls=ca.server_cert, main_cf=main_cf) as postfix:
        work: Coroutine[Any, Any, dict[str, list[float]]] = probe_all(postfix, ca)
        if loop == "uvloop":
            import uvloop

            durations = uvloop.run(work)
        else:
            durations = asyncio.run(work)
        postfix.wait_log(rf"TLS connection established from \S+\[{CLIENT}\]: TLSv1\.3")
    print(json.dumps(durations))


if __name__ == "__main__":
    main()
