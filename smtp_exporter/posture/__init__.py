"""Mail-security posture: checks that run beside the SMTP conversation, each at most once per
`posture.interval` per series, and never change `smtp_probe_success` (issue 14).

One module per check, citing the RFC sections it follows (`dane` with `tlsa`, `mta_sts`, `tls_rpt`,
`fcrdns`, `dnsbl`, `mx_hygiene`); the shared DNSSEC-aware lookups in `dns`; the interface a check implements in
`check`; scheduling and memory in `runner`.
"""

from __future__ import annotations

from smtp_exporter.posture import dane, dnsbl, fcrdns, mta_sts, mx_hygiene, tls_rpt
from smtp_exporter.posture.check import Check

# Every check of config.posture.CHECKS, in report order.
CHECKS: tuple[Check, ...] = (
    dane.CHECK,
    mta_sts.CHECK,
    tls_rpt.CHECK,
    fcrdns.CHECK,
    dnsbl.CHECK,
    mx_hygiene.CHECK,
)
