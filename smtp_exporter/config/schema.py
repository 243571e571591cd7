"""The validated configuration: frozen dataclasses built by `config.loader`.

Defaults live here and only here; the loader applies them first and then what the file
says. Key names mirror the YAML keys (they are the config contract documented in the
README).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from smtp_exporter.model import Transaction


class StartTLS(enum.StrEnum):
    AUTO = "auto"  # use STARTTLS when the server offers it
    REQUIRED = "required"  # fail with starttls_not_offered when it does not
    NEVER = "never"


class IPProtocol(enum.StrEnum):
    # A and AAAA looked up independently; Happy Eyeballs (RFC 8305): IPv6 first, IPv4 started
    # after happy_eyeballs_delay if IPv6 has not connected, the first connection wins.
    AUTO = "auto"
    IP4 = "ip4"
    IP6 = "ip6"
    PREFER_IP4 = "prefer_ip4"  # as auto, IPv4 first
    # Each family on its own: scheduled, a series each (label ip_protocol="4"|"6"); /probe and
    # the CLI, IPv6 then IPv4 in one result that fails when either fails.
    BOTH = "both"


class MXFailover(enum.StrEnum):
    """The failures on one MX host that move a probe on to the next (`mx_failover_on`)."""

    CONNECT = "connect"  # no address of the host accepted a connection
    GREETING = "greeting"  # a 4xx/5xx greeting
    EHLO = "ehlo"  # EHLO (and HELO after it) refused, or the connection lost during it


class AuthMechanism(enum.StrEnum):
    AUTO = "auto"  # the strongest the server offers among those we speak
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    CRAM_MD5 = "CRAM-MD5"
    # OAuth 2.0 bearer tokens (Microsoft 365, Google Workspace): never chosen by `auto`, and
    # the token comes from token_file or token_env, re-read at every probe.
    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"  # RFC 7628


OAUTH_MECHANISMS = frozenset((AuthMechanism.XOAUTH2, AuthMechanism.OAUTHBEARER))


class Pipelining(enum.StrEnum):
    """RFC 2920: MAIL, every RCPT and DATA in one write."""

    AUTO = "auto"  # when the server offers PIPELINING
    NEVER = "never"
    REQUIRED = "required"  # fail with expectation_failed when the server does not offer it


class Chunking(enum.StrEnum):
    """RFC 3030: the message sent with BDAT instead of DATA."""

    NEVER = "never"
    AUTO = "auto"  # when the server offers CHUNKING


class BodyType(enum.StrEnum):
    """RFC 6152: BODY=8BITMIME on MAIL FROM."""

    AUTO = "auto"  # declared when the message has 8-bit content and the server offers 8BITMIME
    SEVEN_BIT = "7bit"  # never declared (the message must then be 7-bit)


class SMTPUTF8(enum.StrEnum):
    """RFC 6531: SMTPUTF8 on MAIL FROM."""

    AUTO = "auto"  # declared when an address or header is non-ASCII
    REQUIRED = "required"  # always declared: the probe checks the server offers it


class MXMode(enum.StrEnum):
    PRIMARY = "primary"  # one series: the first MX host that accepts a connection
    EACH = "each"  # every MX host is probed and is its own series (label mx_host)


class Secret(str):
    """A string that never shows itself in a repr, a log line or an f-string by accident."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<secret>"

    def __str__(self) -> str:
        return "<secret>"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: str = "TLS12"  # TLS10 | TLS11 | TLS12 | TLS13


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    mechanism: AuthMechanism = AuthMechanism.AUTO
    username: str = ""
    # Read from password_file or password_env at load time; never from the YAML itself.
    password: Secret = Secret("")  # noqa: RUF009 (immutable)
    password_file: str | None = None
    password_env: str | None = None
    # OAuth mechanisms: where each probe reads the bearer token (an external agent refreshes it),
    # so the token itself is never part of the config.
    token_file: str | None = None
    token_env: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageConfig:
    subject: str = "smtp-exporter probe"
    body: str = "This message was sent by smtp-exporter to check that mail is accepted."
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectConfig:
    banner: str | None = None  # a regular expression searched in the 220 greeting
    extensions: tuple[str, ...] = ()  # EHLO keywords that must be offered (upper case)


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port" / "[ipv6]:port"; empty: system resolver
    timeout: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSBLConfig:
    zones: tuple[str, ...] = ()  # lower case, without the trailing dot
    addresses: tuple[str, ...] = ()  # IP literals checked beside the connected address


@dataclass(frozen=True, slots=True, kw_only=True)
class PostureConfig:
    """The `posture` section: mail-security checks run beside the conversation (`posture/`)."""

    interval: float = 300.0  # each check runs at most this often per series
    dane: bool = False
    mta_sts: bool = False
    tls_rpt: bool = False
    fcrdns: bool = False
    dnsbl: DNSBLConfig | None = None
    mx_hygiene: bool = False
    ca_file: str | None = None  # for MTA-STS; None: the system's CA store


@dataclass(frozen=True, slots=True, kw_only=True)
class ImapConfig:
    host: str | None = None  # None: the target's host
    port: int | None = None  # None: 993 with implicit TLS, 143 otherwise
    implicit_tls: bool | None = None  # None: true unless starttls is required
    starttls: StartTLS = StartTLS.NEVER  # required or never: the password never goes in clear
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    username: str = ""
    # Read from password_file or password_env at load time; never from the YAML itself.
    password: Secret = Secret("")  # noqa: RUF009 (immutable)
    password_file: str | None = None
    password_env: str | None = None
    mailbox: str = "INBOX"

    @property
    def tls_on_connect(self) -> bool:
        """Implicit TLS (IMAPS): set so, or not set and no STARTTLS asked for."""
        if self.implicit_tls is not None:
            return self.implicit_tls
        return self.starttls is not StartTLS.REQUIRED

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.tls_on_connect else 143


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """End-to-end delivery: after the SMTP part, wait for the probe message over IMAP."""

    imap: ImapConfig = field(default_factory=ImapConfig)
    timeout: float = 120.0  # the IMAP part, connect to logout, waiting for the message included
    poll_interval: float = 2.0  # SEARCH every this often when the server offers no IDLE
    delete: bool = True  # remove the found message and this module's leftovers
    authserv_id: str | None = None  # trust Authentication-Results of this authserv-id only


MAX_DEFAULT_CONNECT_TIMEOUT = 5.0  # Postfix's smtp_connect_timeout is 30s; probes have less time


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleConfig:
    port: int = 25
    timeout: float = 10.0
    ehlo: str | None = None  # None: this host's FQDN, found once per process
    helo_fallback: bool = True
    starttls: StartTLS = StartTLS.AUTO
    implicit_tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig | None = None
    transaction: Transaction = Transaction.NONE
    mail_from: str = ""  # empty: the null reverse-path <>
    rcpt_to: tuple[str, ...] = ("postmaster",)  # RFC 5321 4.5.1: every server must accept it
    message: MessageConfig = field(default_factory=MessageConfig)
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    ip_protocol: IPProtocol = IPProtocol.AUTO
    mx: bool = False
    # Per connect attempt; None: min(timeout / 3, MAX_DEFAULT_CONNECT_TIMEOUT) of the probe's
    # deadline (which /probe and the CLI may shorten).
    connect_timeout: float | None = None
    max_attempts: int = 5  # connect attempts across all MX hosts and addresses
    mx_failover_on: tuple[MXFailover, ...] = tuple(MXFailover)  # which failures move on to the next MX
    source_ip_address: str | None = None  # an IPv4 or IPv6 literal the socket is bound to
    happy_eyeballs_delay: float = 0.25  # auto / prefer_ip4: the other family starts after this
    dns: DNSConfig = field(default_factory=DNSConfig)
    fail_on_quit: bool = False  # a bad QUIT reply fails the probe only when true
    pipelining: Pipelining = Pipelining.AUTO
    chunking: Chunking = Chunking.NEVER
    size_declaration: bool = True  # SIZE=<bytes> on MAIL FROM when the server offers SIZE (RFC 1870)
    body_type: BodyType = BodyType.AUTO
    smtputf8: SMTPUTF8 = SMTPUTF8.AUTO
    requiretls: bool = False  # REQUIRETLS on MAIL FROM (RFC 8689): only over TLS, and when offered
    posture: PostureConfig | None = None  # None: no posture checks
    delivery: DeliveryConfig | None = None  # None: the probe ends with the SMTP conversation

    @property
    def total_timeout(self) -> float:
        """The SMTP part's deadline plus the IMAP part's, when there is one."""
        return self.timeout + (self.delivery.timeout if self.delivery is not None else 0.0)

    @property
    def source_family(self) -> int | None:
        """4 or 6 for a `source_ip_address` (checked at load to be an IP literal), else None."""
        if self.source_ip_address is None:
            return None
        return 6 if ":" in self.source_ip_address else 4

    def connect_timeout_for(self, timeout: float) -> float:
        """The bound of each connect attempt of a probe whose deadline is `timeout`."""
        if self.connect_timeout is not None:
            return min(self.connect_timeout, timeout)
        return min(timeout / 3, MAX_DEFAULT_CONNECT_TIMEOUT)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    target: str
    module: str
    interval: float
    labels: tuple[tuple[str, str], ...] = ()
    mx_mode: MXMode = MXMode.PRIMARY
    line: int = 0  # where it stands in the config file, for messages


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultsConfig:
    module: str = "smtp_handshake"
    interval: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    max_concurrency: int = 512
    shutdown_grace_period: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    # Buckets of smtp_probe_duration_histogram_seconds (seconds).
    histogram_buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    # Per-phase histograms multiply series by the number of phases: off unless asked for.
    phase_histograms: bool = False
    # Buckets of smtp_delivery_duration_distribution_seconds (seconds): 1 s .. 30 min.
    delivery_histogram_buckets: tuple[float, ...] = (
        1.0,
        2.0,
        5.0,
        10.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        1800.0,
    )
    # blackbox_exporter's names (probe_success, probe_ssl_earliest_cert_expiry, ...) beside this
    # exporter's in /metrics: off by default since they add series (/probe always has them).
    blackbox_names: bool = False
    # Full results (with transcripts) kept for the status page, /transcript and debug output,
    # shared by all targets: the newest this many.
    history_limit: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpProbeConfig:
    # Empty: /probe may reach any target (the blackbox_exporter model). Otherwise each entry is
    # a host pattern ("*.example.org", "mx1.example.org"), a CIDR ("192.0.2.0/24") or either
    # with a port (":25", "mx1.example.org:587", "[2001:db8::/32]:25").
    allowed_targets: tuple[str, ...] = ()
    max_concurrent: int = 64  # /probe requests beyond this get 503


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardConfig:
    count: int = 1
    index: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    modules: dict[str, ModuleConfig]
    targets: tuple[TargetConfig, ...] = ()  # the config file's own (not those of target_files)
    target_files: tuple[str, ...] = ()  # globs of file_sd files, as written
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http_probe: HttpProbeConfig = field(default_factory=HttpProbeConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    source: str = "<built-in>"  # the file it came from
