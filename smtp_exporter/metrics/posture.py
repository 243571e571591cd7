"""The metric families of the posture checks (smtp_exporter/posture/), and their samples.

A check's report names each sample's family by its metric name (the report lives in `model`,
below this package); `posture_samples` maps them back. A new check adds its families here, to
`POSTURE_FAMILIES`, and documents them in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from smtp_exporter.metrics.families import Family, Kind, Sample, bound
from smtp_exporter.model import ProbeResult

POSTURE_LAST_RUN = Family(
    "smtp_posture_last_run_timestamp_seconds",
    Kind.GAUGE,
    "Unix time at which each posture check last ran for this series (its results are kept in between).",
)
# mx_hygiene
MX_RECORDS = Family("smtp_mx_records", Kind.GAUGE, "MX records of the mail domain (a null MX counts as one).")
MX_PROBLEM = Family(
    "smtp_mx_problem", Kind.GAUGE, "Whether the mail domain's MX records have each problem (1) or not (0)."
)
# mta_sts
MTA_STS_RECORD_VALID = Family(
    "smtp_mta_sts_record_valid",
    Kind.GAUGE,
    "Whether _mta-sts.<domain> holds exactly one valid v=STSv1 TXT record (RFC 8461 section 3.1).",
)
MTA_STS_FETCH_SUCCESS = Family(
    "smtp_mta_sts_policy_fetch_success",
    Kind.GAUGE,
    "Whether the MTA-STS policy was fetched (HTTPS, valid certificate, HTTP 200, at most 64 KiB) and is valid.",
)
MTA_STS_MODE = Family(
    "smtp_mta_sts_policy_mode",
    Kind.GAUGE,
    "The MTA-STS policy's mode, one series per mode (enforce, testing, none): 1 for the current one, all 0 without a valid policy.",
)
MTA_STS_MAX_AGE = Family(
    "smtp_mta_sts_policy_max_age_seconds",
    Kind.GAUGE,
    "The MTA-STS policy's max_age (present with a valid policy).",
)
MTA_STS_MX_COVERED = Family(
    "smtp_mta_sts_mx_covered",
    Kind.GAUGE,
    "Whether each MX host of the domain matches an mx pattern of the MTA-STS policy (RFC 8461 section 4.1).",
)
MTA_STS_CERT_VALID = Family(
    "smtp_mta_sts_cert_valid",
    Kind.GAUGE,
    "Whether the certificate of the MX the probe connected to is PKIX-valid for its host name (RFC 8461 section 4.2).",
)
MTA_STS_CHANGED = Family(
    "smtp_mta_sts_policy_changed_without_id_change",
    Kind.GAUGE,
    "Whether the MTA-STS policy body changed while the TXT record's id did not (senders keep the stale policy).",
)
# tls_rpt
TLS_RPT_RECORD_VALID = Family(
    "smtp_tls_rpt_record_valid",
    Kind.GAUGE,
    "Whether _smtp._tls.<domain> holds exactly one valid v=TLSRPTv1 record with mailto:/https: rua URIs (RFC 8460 section 3).",
)
# fcrdns
FCRDNS_MATCH = Family(
    "smtp_fcrdns_match",
    Kind.GAUGE,
    "Whether the connected address has a PTR name that resolves back to it (forward-confirmed reverse DNS).",
)
FCRDNS_BANNER_NAME_MATCH = Family(
    "smtp_fcrdns_banner_name_match",
    Kind.GAUGE,
    "Whether a PTR name of the connected address equals the banner or EHLO host name (advice, RFC 5321 4.1.4).",
)
# dnsbl
DNSBL_LISTED = Family(
    "smtp_dnsbl_listed",
    Kind.GAUGE,
    "Whether the address is listed in the DNSBL zone (never for error answers).",
)
DNSBL_STATE = Family(
    "smtp_dnsbl_state",
    Kind.GAUGE,
    "The address's state in the DNSBL zone: listed, not_listed, error or zone_unhealthy (1 for the current one).",
)
DNSBL_RETURN_CODE = Family(
    "smtp_dnsbl_return_code",
    Kind.GAUGE,
    "The last octet of the zone's 127/8 answer for the address (e.g. 2), 0 when there is none.",
)
# dane (and the DNSSEC status of the records the checks use)
RESOLVER_VALIDATING = Family(
    "smtp_posture_resolver_validating",
    Kind.GAUGE,
    "Whether the module's resolver set the AD bit on the root's DNSKEY (it validates DNSSEC); 0 makes the DANE state resolver_not_validating.",
)
DNSSEC_SECURE = Family(
    "smtp_dnssec_secure",
    Kind.GAUGE,
    "Whether the resolver said the record set a check used is DNSSEC-secure (AD bit), per record: mx, address, tlsa, mta_sts, tls_rpt.",
)
DANE_STATE = Family(
    "smtp_dane_state",
    Kind.GAUGE,
    "The DANE state of the MX (RFC 7672), one series per state: 1 for the current one.",
)
DANE_TLSA_RECORDS = Family(
    "smtp_dane_tlsa_records", Kind.GAUGE, "TLSA records at _<port>._tcp.<base> (present once securely known)."
)
DANE_TLSA_RECORD_MATCH = Family(
    "smtp_dane_tlsa_record_match",
    Kind.GAUGE,
    "Whether each TLSA record authenticates the presented chain (1) or not (0; also when it is unusable for SMTP).",
)
DANE_ROLLOVER_READY = Family(
    "smtp_dane_rollover_ready",
    Kind.GAUGE,
    "Whether at least two usable TLSA records are published, one of them 3 x x (3xx+3xx or 3xx+2xx).",
)

POSTURE_FAMILIES: tuple[Family, ...] = (
    POSTURE_LAST_RUN,
    MX_RECORDS,
    MX_PROBLEM,
    MTA_STS_RECORD_VALID,
    MTA_STS_FETCH_SUCCESS,
    MTA_STS_MODE,
    MTA_STS_MAX_AGE,
    MTA_STS_MX_COVERED,
    MTA_STS_CERT_VALID,
    MTA_STS_CHANGED,
    TLS_RPT_RECORD_VALID,
    FCRDNS_MATCH,
    FCRDNS_BANNER_NAME_MATCH,
    DNSBL_LISTED,
    DNSBL_STATE,
    DNSBL_RETURN_CODE,
    RESOLVER_VALIDATING,
    DNSSEC_SECURE,
    DANE_STATE,
    DANE_TLSA_RECORDS,
    DANE_TLSA_RECORD_MATCH,
    DANE_ROLLOVER_READY,
)
_BY_NAME = {family.name: family for family in POSTURE_FAMILIES}


def posture_samples(result: ProbeResult, mx_host: str | None = None) -> Iterator[Sample]:
    """The samples of the result's posture reports: each check's last run, then its own.

    `mx_host`: the series already carries that label (mx_mode each). A sample about one MX
    (labelled `mx_host` first) is then the series' own MX's without the label, and another MX's
    is left to that MX's series, which reports it too.
    """
    own = f'mx_host="{bound(mx_host)}"' if mx_host is not None else None
    for report in result.posture:
        yield POSTURE_LAST_RUN, f'check="{report.check}"', report.ran_at
        for name, labels, value in report.samples:
            if own is not None and labels.startswith("mx_host="):
                if labels == own:
                    labels = ""
                elif labels.startswith(own + ","):
                    labels = labels[len(own) + 1 :]
                else:
                    continue
            yield _BY_NAME[name], labels, value
