"""Probes against a real Postfix smtpd offering STARTTLS (issue 13: the ehlo_tls stall).

Postfix's smtpd leaves Nagle on. After a TLS 1.3 handshake it sends a session ticket the client
never answers; its EHLO reply then waited for our delayed ACK of that ticket (~40 ms on Debian's
kernel), until the probe acknowledged promptly (TCP_QUICKACK, probe/connection.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from smtp_exporter.model import Phase
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module, names, trusting
from tests.probe.test_tls import assert_facts_of, assert_session
from tests.servers.postfix_smtpd import PostfixSmtpd
from tests.servers.tls import TestCA

PROBES = 20


async def test_ehlo_tls_against_postfix_measures_the_server(
    postfix_factory: Callable[..., PostfixSmtpd], tls_ca: TestCA
) -> None:
    # Debian's default: a TLS session cache, so smtpd also issues tickets as it does in production.
    postfix = postfix_factory(
        tls=tls_ca.server_cert,
        main_cf={"smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache"},
    )
    settings = module(port=postfix.port, tls_config=trusting(tls_ca))
    durations = []
    for _ in range(PROBES):
        result = await Prober().probe(*compiled(postfix.target, "m", settings))
        assert result.success, describe(result)
        assert names(result) == ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"]
        assert result.tls is not None and result.tls.verified
        assert result.tls.version == "TLSv1.3"
        assert_session(result.tls)
        assert_facts_of(result.tls, tls_ca.server_cert)
        ehlo_tls = result.phase(Phase.EHLO_TLS)
        assert ehlo_tls is not None and ehlo_tls.reply_code == 250
        durations.append(ehlo_tls.duration_seconds)
    # A coarse check that the stall is gone (it was 40 ms), not a timing target.
    assert statistics.median(durations) < 0.010, sorted(durations)
    postfix.wait_log(r"TLS connection established from localhost\[127\.0\.0\.1\]: TLSv1\.3")
