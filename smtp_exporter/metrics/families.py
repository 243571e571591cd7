"""The metric families of a probe result: names, types, help texts and samples.

Names and labels are the public contract documented in README.md. Every sample of a probe
result is produced here, once, by `measured_samples` and `state_samples` (together
`result_samples`); the scheduled `/metrics` blocks and the `/probe` response both render these
samples, so the two modes can never disagree.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter

from smtp_exporter.model import AttemptOutcome, Phase, ProbeResult, TLSInfo

# Label values that come from a server (certificate names, cipher, MX host) are cut to this many
# characters and escaped, and at most this many EHLO keywords are exported, so a hostile server
# cannot inflate the series or their size. EHLO keywords and enhanced status codes need neither:
# they are checked against their grammar where they are read (protocol/ehlo.py, model.py).
MAX_LABEL_VALUE_CHARS = 256
MAX_EXTENSIONS = 64

Labels = tuple[tuple[str, str], ...]
# (family, the sample's own labels rendered as `name="value",...`, value)
Sample = tuple["Family", str, float]


class Kind(enum.Enum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    INFO = "info"  # a gauge whose value is always 1 and whose labels carry the information


@dataclass(frozen=True, slots=True, eq=False)
class Family:
    """One metric family. `name` is the sample name of the text format (`_total`, `_info` included).

    Families compare by identity (they are module constants), which keeps them cheap as dict keys.
    """

    name: str
    kind: Kind
    help: str
    text_header: bytes = field(init=False, repr=False)
    openmetrics_header: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kind = "gauge" if self.kind is Kind.INFO else self.kind.value
        text = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {kind}\n".encode()
        # OpenMetrics names the family without the sample suffix of counters and infos.
        name = self.name
        if self.kind is Kind.COUNTER:
            name = name.removesuffix("_total")
        elif self.kind is Kind.INFO:
            name = name.removesuffix("_info")
        openmetrics = f"# HELP {name} {self.help}\n# TYPE {name} {self.kind.value}\n".encode()
        object.__setattr__(self, "text_header", text)
        object.__setattr__(self, "openmetrics_header", openmetrics)


def _g(name: str, help_text: str) -> Family:
    return Family(name, Kind.GAUGE, help_text)


def _i(name: str, help_text: str) -> Family:
    return Family(name, Kind.INFO, help_text)


SUCCESS = _g("smtp_probe_success", "Whether the latest probe succeeded (1) or failed (0).")
DURATION = _g("smtp_probe_duration_seconds", "Duration of the latest probe, all phases included.")
LAST_RUN = _g("smtp_probe_last_run_timestamp_seconds", "Unix time at which the latest probe started.")
PHASE_DURATION = _g(
    "smtp_probe_phase_duration_seconds", "Duration of each phase the latest probe went through."
)
REPLY_CODE = _g("smtp_probe_reply_code", "SMTP reply code the server gave in each phase of the latest probe.")
ENHANCED_STATUS = _i(
    "smtp_probe_enhanced_status_info", "RFC 3463 enhanced status code of a phase's reply in the latest probe."
)
LAST_FAILURE = _i(
    "smtp_probe_last_failure_info",
    "Phase and reason of the latest probe's failure; absent when it succeeded.",
)
TLS_VERSION = _i("smtp_probe_tls_version_info", "TLS version negotiated by the latest probe.")
TLS_CIPHER = _i("smtp_probe_tls_cipher_info", "TLS cipher suite negotiated by the latest probe.")
CERT_NOT_AFTER = _g(
    "smtp_probe_tls_cert_not_after_timestamp_seconds", "Unix time at which the server certificate expires."
)
CERT_NOT_BEFORE = _g(
    "smtp_probe_tls_cert_not_before_timestamp_seconds",
    "Unix time from which the server certificate is valid.",
)
CHAIN_NOT_AFTER = _g(
    "smtp_probe_tls_chain_earliest_not_after_timestamp_seconds",
    "Unix time at which the first certificate of the presented chain (leaf or intermediate) expires.",
)
CERT_VERIFIED = _g(
    "smtp_probe_tls_cert_verified", "Whether the server certificate chain and name verified (1) or not (0)."
)
CERT_INFO = _i(
    "smtp_probe_tls_cert_info", "Subject, issuer and SHA-256 fingerprint of the server certificate."
)
EXTENSION = _i("smtp_probe_extension_info", "EHLO keyword offered by the server in the latest probe.")
MAX_SIZE = _g(
    "smtp_probe_max_message_size_bytes",
    "Maximum message size the server declared with the EHLO SIZE keyword (0: no fixed limit).",
)
IP_PROTOCOL = _g(
    "smtp_probe_ip_protocol", "IP version of the address the latest probe connected to (4 or 6)."
)
MX_INFO = _i(
    "smtp_probe_mx_info", "MX host (and its preference) that the latest probe of a mail domain used."
)
ATTEMPTS = _g("smtp_probe_attempts", "Connect attempts the latest probe made (cancelled ones included).")
PIPELINED = _g(
    "smtp_probe_pipelined",
    "Whether the latest probe sent MAIL, RCPT and DATA in one write (PIPELINING, RFC 2920) (1) or "
    "one command at a time (0).",
)
FALLBACK = _g(
    "smtp_probe_fallback",
    "Whether the latest probe succeeded on another candidate than its first (the primary MX, or the "
    "preferred address family) because that first one failed (1) or not (0).",
)

DELIVERY_SUCCESS = _g(
    "smtp_delivery_success",
    "Whether the latest probe's message was found in the mailbox within delivery.timeout (1) or not (0).",
)
DELIVERY_DURATION = _g(
    "smtp_delivery_duration_seconds",
    "Time from the 250 after the message to the message visible in the mailbox, in the latest probe.",
)
DELIVERY_HOPS = _g("smtp_delivery_hops", "Received: headers of the latest probe's delivered message.")
DELIVERY_AUTHENTICATION_RESULT = _g(
    "smtp_delivery_authentication_result",
    "Authentication-Results of the receiving side for the latest probe's message, by method and result.",
)

# The families describing one probe result, in exposition order.
RESULT_FAMILIES: tuple[Family, ...] = (
    SUCCESS,
    DURATION,
    LAST_RUN,
    PHASE_DURATION,
    REPLY_CODE,
    ENHANCED_STATUS,
    LAST_FAILURE,
    TLS_VERSION,
    TLS_CIPHER,
    CERT_NOT_AFTER,
    CERT_NOT_BEFORE,
    CHAIN_NOT_AFTER,
    CERT_VERIFIED,
    CERT_INFO,
    EXTENSION,
    MAX_SIZE,
    IP_PROTOCOL,
    MX_INFO,
    ATTEMPTS,
    FALLBACK,
    DELIVERY_SUCCESS,
    DELIVERY_DURATION,
    DELIVERY_HOPS,
    DELIVERY_AUTHENTICATION_RESULT,
    PIPELINED,
)

# Families kept across the probes of a scheduled target.
PROBES_TOTAL = Family("smtp_probes_total", Kind.COUNTER, "Probes completed for this target.")
FAILURES_TOTAL = Family(
    "smtp_probe_failures_total", Kind.COUNTER, "Failed probes for this target, by failing phase and reason."
)
# Not "..._histogram_seconds": promtool's linter rejects a type name inside a metric name.
DURATION_HISTOGRAM = Family(
    "smtp_probe_duration_distribution_seconds", Kind.HISTOGRAM, "Distribution of whole-probe durations."
)
PHASE_DURATION_HISTOGRAM = Family(
    "smtp_probe_phase_duration_distribution_seconds", Kind.HISTOGRAM, "Distribution of phase durations."
)
DELIVERY_HISTOGRAM = Family(
    "smtp_delivery_duration_distribution_seconds",
    Kind.HISTOGRAM,
    "Distribution of delivery durations (the delivery phase of probes whose message was found).",
)
# Counted in the scheduled series across its probes; a /probe response counts its own probe's.
ATTEMPT_FAILURES_TOTAL = Family(
    "smtp_probe_attempt_failures_total",
    Kind.COUNTER,
    "Failed connect attempts inside probes (succeeded or not), by reason.",
)
SERIES_FAMILIES: tuple[Family, ...] = (
    *RESULT_FAMILIES,
    PROBES_TOTAL,
    FAILURES_TOTAL,
    ATTEMPT_FAILURES_TOTAL,
    DURATION_HISTOGRAM,
    PHASE_DURATION_HISTOGRAM,
    DELIVERY_HISTOGRAM,
)
# blackbox_exporter's names (probe_success, ...) are in metrics/blackbox.py.


def escape_label_value(value: str) -> str:
    """Label-value escaping of both text formats (backslash, double quote, line feed)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def bound(value: str) -> str:
    """A label value from a server: cut to MAX_LABEL_VALUE_CHARS characters, then escaped."""
    return escape_label_value(value[:MAX_LABEL_VALUE_CHARS])


# The phase label of each phase: a constant table of the closed set of phase names.
_PHASE_LABELS: dict[str, str] = {phase: f'phase="{phase.value}"' for phase in Phase}


def result_samples(result: ProbeResult, *, mx_host_label: bool = False) -> Iterator[Sample]:
    """Every sample of one probe result as (family, rendered extra labels, value): its
    measurements, then its state (`measured_samples`, `state_samples`).

    The series' own labels (target, module, ...) are not included. `mx_host_label`: the series
    already carries `mx_host` (mx_mode each), so `smtp_probe_mx_info` must not repeat it.
    Samples of one family come out in order; renderers group them by family.
    """
    yield from measured_samples(result)
    yield from state_samples(result, mx_host_label=mx_host_label)


def measured_samples(result: ProbeResult) -> Iterator[Sample]:
    """The samples of what a probe measured (its durations, when it ran, its delivery check):
    new at every probe."""
    yield DURATION, "", result.duration_seconds
    yield LAST_RUN, "", result.start_timestamp
    phase_labels = _PHASE_LABELS
    seen: set[str] = set()  # a phase is exported once even if a result repeats it
    for phase in result.phases:
        name = phase.phase
        if name not in seen:
            seen.add(name)
            yield PHASE_DURATION, phase_labels[name], phase.duration_seconds
    delivery = result.delivery
    if delivery is not None:
        found = delivery.duration_seconds
        yield DELIVERY_SUCCESS, "", 0 if found is None else 1
        if found is not None:
            yield DELIVERY_DURATION, "", found
        if delivery.hops is not None:
            yield DELIVERY_HOPS, "", delivery.hops
        for method, outcome in delivery.authentication_results:
            yield DELIVERY_AUTHENTICATION_RESULT, f'method="{bound(method)}",result="{bound(outcome)}"', 1


def state_samples(result: ProbeResult, *, mx_host_label: bool = False) -> Iterator[Sample]:
    """The samples of the state a probe found (success or failure, reply codes, TLS, EHLO
    keywords, the address, attempts, pipelining, the MX host): of the families in
    STATE_FAMILIES, the same as at the previous probe whenever `same_state` says so.

    Label values that come from the server are bounded and escaped here; phase and reason
    names are safe by construction."""
    yield SUCCESS, "", 1 if result.success else 0
    phase_labels = _PHASE_LABELS
    replied: set[str] = set()  # a phase is exported once even if a result repeats it
    for phase in result.phases:
        name = phase.phase
        if phase.reply_code is not None and name not in replied:
            replied.add(name)
            label = phase_labels[name]
            yield REPLY_CODE, label, phase.reply_code
            status = phase.enhanced_status  # read once: each read matches the reply's text
            if status is not None:  # digits and dots only: nothing to bound or escape
                yield ENHANCED_STATUS, f'{label},status="{status}"', 1
    if result.failure is not None:
        failure = result.failure
        yield LAST_FAILURE, f'{phase_labels[failure.phase]},reason="{failure.reason.value}"', 1
    tls = result.tls
    if tls is not None:
        yield TLS_VERSION, f'version="{bound(tls.version)}"', 1
        yield TLS_CIPHER, f'cipher="{bound(tls.cipher)}"', 1
        if tls.cert_not_after_timestamp is not None:
            yield CERT_NOT_AFTER, "", tls.cert_not_after_timestamp
        if tls.cert_not_before_timestamp is not None:
            yield CERT_NOT_BEFORE, "", tls.cert_not_before_timestamp
        if tls.chain_not_after_timestamp is not None:
            yield CHAIN_NOT_AFTER, "", tls.chain_not_after_timestamp
        yield CERT_VERIFIED, "", 1 if tls.verified else 0
        if tls.subject is not None or tls.fingerprint_sha256 is not None:
            cert = (
                f'subject="{bound(tls.subject or "")}",issuer="{bound(tls.issuer or "")}",'
                f'fingerprint_sha256="{bound(tls.fingerprint_sha256 or "")}"'
            )
            yield CERT_INFO, cert, 1
    seen: set[str] = set()
    for keyword, _params in result.server.extensions:
        if len(seen) >= MAX_EXTENSIONS:
            break
        # An RFC 5321 ehlo-keyword, as protocol/ehlo.py keeps no other (at most 64 letters,
        # digits and hyphens): nothing to cut or escape.
        label = f'extension="{keyword}"'
        if label not in seen:
            seen.add(label)
            yield EXTENSION, label, 1
    size = result.server.max_message_size
    if size is not None:
        yield MAX_SIZE, "", size
    if result.address is not None:
        yield IP_PROTOCOL, "", result.address.family
    yield ATTEMPTS, "", len(result.attempts)
    yield FALLBACK, "", 1 if result.fallback else 0
    yield PIPELINED, "", 1 if result.pipelined else 0
    if result.mx is not None:
        if mx_host_label:
            yield MX_INFO, f'preference="{result.mx.preference}"', 1
        else:
            yield MX_INFO, f'mx_host="{bound(result.mx.host)}",preference="{result.mx.preference}"', 1


# The families of `state_samples`.
STATE_FAMILIES: tuple[Family, ...] = (
    SUCCESS,
    REPLY_CODE,
    ENHANCED_STATUS,
    LAST_FAILURE,
    TLS_VERSION,
    TLS_CIPHER,
    CERT_NOT_AFTER,
    CERT_NOT_BEFORE,
    CHAIN_NOT_AFTER,
    CERT_VERIFIED,
    CERT_INFO,
    EXTENSION,
    MAX_SIZE,
    IP_PROTOCOL,
    ATTEMPTS,
    FALLBACK,
    PIPELINED,
    MX_INFO,
)
# The families `result_samples` gives a sample of for every result, whatever it holds.
EVERY_RESULT_FAMILIES: tuple[Family, ...] = (SUCCESS, DURATION, LAST_RUN, ATTEMPTS, FALLBACK, PIPELINED)
# What `state_samples` reads of a phase: its name, reply code and reply text.
_REPLY = itemgetter(0, 2, 3)


def same_state(result: ProbeResult, other: ProbeResult) -> bool:
    """Whether `state_samples` gives the same samples for both results: it compares everything
    that function reads (keep the two in step). A target's state rarely changes between probes,
    so a series renders these lines again only when it did (metrics/exposition.py)."""
    return (
        result.success == other.success
        and result.failure == other.failure
        and result.server.extensions == other.server.extensions
        and result.fallback == other.fallback
        and result.pipelined == other.pipelined
        and result.mx == other.mx
        and len(result.attempts) == len(other.attempts)
        and _family(result) == _family(other)
        and _same_tls(result.tls, other.tls)
        and list(map(_REPLY, result.phases)) == list(map(_REPLY, other.phases))
    )


def _family(result: ProbeResult) -> int | None:
    return None if result.address is None else result.address.family


def _same_tls(tls: TLSInfo | None, other: TLSInfo | None) -> bool:
    """The TLS facts `state_samples` reads (not the whole `TLSInfo`: a result keeps its chain
    only until its posture checks ran)."""
    if tls is None or other is None:
        return tls is other
    return (
        tls.version == other.version
        and tls.cipher == other.cipher
        and tls.verified == other.verified
        and tls.cert_not_after_timestamp == other.cert_not_after_timestamp
        and tls.cert_not_before_timestamp == other.cert_not_before_timestamp
        and tls.chain_not_after_timestamp == other.chain_not_after_timestamp
        and tls.subject == other.subject
        and tls.issuer == other.issuer
        and tls.fingerprint_sha256 == other.fingerprint_sha256
    )


def attempt_failures(result: ProbeResult) -> Iterator[str]:
    """The reason of each failed connect attempt of `result`."""
    for attempt in result.attempts:
        if attempt.outcome is AttemptOutcome.FAILED and attempt.reason is not None:
            yield attempt.reason.value
