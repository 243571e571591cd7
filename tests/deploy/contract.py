"""The metric names the dashboard and the alerts may use: the exporter's contract (issue 3).

If the exporter renames a metric, this list, the dashboard and the rules change together.
"""

from __future__ import annotations

import re

from smtp_exporter.model import FailureReason, Phase

_HISTOGRAMS = (
    # Not "..._histogram_seconds": promtool check metrics rejects a type name in a metric name.
    "smtp_probe_duration_distribution_seconds",
    "smtp_probe_phase_duration_distribution_seconds",
    "smtp_delivery_duration_distribution_seconds",
)

METRICS = frozenset(
    {
        "smtp_probe_success",
        "smtp_probe_duration_seconds",
        "smtp_probe_last_run_timestamp_seconds",
        "smtp_probe_phase_duration_seconds",
        "smtp_probe_reply_code",
        "smtp_probe_enhanced_status_info",
        "smtp_probe_last_failure_info",
        "smtp_probes_total",
        "smtp_probe_failures_total",
        "smtp_probe_tls_version_info",
        "smtp_probe_tls_cipher_info",
        "smtp_probe_tls_cert_not_after_timestamp_seconds",
        "smtp_probe_tls_cert_not_before_timestamp_seconds",
        "smtp_probe_tls_chain_earliest_not_after_timestamp_seconds",
        "smtp_probe_tls_cert_verified",
        "smtp_probe_tls_cert_info",
        "smtp_probe_extension_info",
        "smtp_probe_max_message_size_bytes",
        "smtp_probe_ip_protocol",
        "smtp_probe_mx_info",
        "smtp_probe_attempts",
        "smtp_probe_fallback",
        "smtp_probe_pipelined",
        "smtp_probe_attempt_failures_total",
        # A module with `delivery` (issue 15).
        "smtp_delivery_success",
        "smtp_delivery_duration_seconds",
        "smtp_delivery_hops",
        "smtp_delivery_authentication_result",
        # blackbox_exporter's names, which migrating users' rules and dashboards use
        # (docs/migrating-from-blackbox.md); the TLS ones need a TLS peer to be served.
        "probe_success",
        "probe_duration_seconds",
        "probe_ssl_earliest_cert_expiry",
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "probe_ssl_last_chain_info",
        "probe_tls_version_info",
        "probe_tls_cipher_info",
        "smtp_posture_last_run_timestamp_seconds",
        "smtp_mx_records",
        "smtp_mx_problem",
        "smtp_mta_sts_record_valid",
        "smtp_mta_sts_policy_fetch_success",
        "smtp_mta_sts_policy_mode",
        "smtp_mta_sts_policy_max_age_seconds",
        "smtp_mta_sts_mx_covered",
        "smtp_mta_sts_cert_valid",
        "smtp_mta_sts_policy_changed_without_id_change",
        "smtp_tls_rpt_record_valid",
        "smtp_fcrdns_match",
        "smtp_fcrdns_banner_name_match",
        "smtp_dnsbl_listed",
        "smtp_dnsbl_state",
        "smtp_dnsbl_return_code",
        "smtp_posture_resolver_validating",
        "smtp_dnssec_secure",
        "smtp_dane_state",
        "smtp_dane_tlsa_records",
        "smtp_dane_tlsa_record_match",
        "smtp_dane_rollover_ready",
        "smtp_exporter_build_info",
        "smtp_exporter_config_last_reload_successful",
        "smtp_exporter_config_last_reload_success_timestamp_seconds",
        "smtp_exporter_web_config_last_reload_successful",
        "smtp_exporter_targets",
        "smtp_exporter_probes_in_flight",
        "smtp_exporter_probes_skipped_total",
        "smtp_exporter_event_loop_lag_seconds",
        "smtp_exporter_probe_requests_total",
        *(f"{name}{suffix}" for name in _HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")),
    }
)

PHASES = frozenset(p.value for p in Phase)
REASONS = frozenset(r.value for r in FailureReason)

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()
        if before.isdigit() or before in ".$" or word in _KEYWORDS or after.startswith("("):
            continue  # part of a number or a duration, a $variable, a keyword or a function
        if re.fullmatch(r"[0-9.e]+|Inf|NaN", word, re.IGNORECASE):
            continue
        names.add(word)
    return names


def label_values(expr: str, label: str) -> set[str]:
    """The values `label` is compared to (=, !=) in the expression's matchers."""
    values = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        for value in re.findall(rf'\b{label}\s*!?=\s*"([^"]*)"', matchers):
            values.add(value)
    return values
