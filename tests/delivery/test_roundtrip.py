"""The delivery check against the real mail path (conftest.py): Postfix takes the probe message
over STARTTLS and relays it over LMTP to Dovecot, where the check finds it over IMAP."""

from __future__ import annotations

import email
import smtplib
import time
from collections.abc import Callable
from typing import Any

from smtp_exporter.config.schema import DeliveryConfig, ImapConfig, Secret, StartTLS
from smtp_exporter.metrics import Buckets, SeriesState
from smtp_exporter.metrics.exposition import render_probe_result
from smtp_exporter.model import FailureReason, Phase, ProbeResult
from smtp_exporter.presentation import probe_json
from smtp_exporter.probe import Prober
from smtp_exporter.protocol.message import TOKEN_HEADER
from tests.delivery.conftest import MailPath
from tests.helpers import series_text
from tests.probe.common import FULL_PHASES, compiled, describe, module, names, trusting
from tests.servers.tls import TestCA

SMTP_PHASES = [p for p in FULL_PHASES if p != "auth"]
IMAP_PHASES = [
    "imap_connect",
    "imap_tls",
    "imap_login",
    "imap_select",
    "delivery",
    "imap_fetch",
    "imap_logout",
]


def roundtrip(path: MailPath, ca: TestCA, *, name: str = "roundtrip", **delivery: Any) -> Any:
    dovecot = path.dovecot
    imap: dict[str, Any] = {
        "host": dovecot.host,
        "port": dovecot.imaps_port,
        "implicit_tls": True,
        "tls_config": trusting(ca, server_name="localhost"),
        "username": dovecot.username,
        "password": Secret(dovecot.password),
    }
    imap.update(delivery.pop("imap", {}))
    options: dict[str, Any] = {"timeout": 5.0, "poll_interval": 0.2}
    options.update(delivery)
    settings = module(
        "smtp_full",
        port=path.postfix.port,
        starttls=StartTLS.REQUIRED,
        auth=None,
        tls_config=trusting(ca),
        mail_from="probe@example.org",
        rcpt_to=(dovecot.username,),
        delivery=DeliveryConfig(imap=ImapConfig(**imap), **options),
    )
    return compiled(path.postfix.target, name, settings)


def probe_messages(path: MailPath) -> list[bytes]:
    """The messages in the mailbox with the probe header (in the header, not the body)."""
    return [m for m in path.dovecot.messages() if email.message_from_bytes(m)[TOKEN_HEADER] is not None]


async def test_the_round_trip_finds_the_message_and_reads_its_headers(
    mail_path: Callable[..., MailPath], tls_ca: TestCA
) -> None:
    path = mail_path()
    result: ProbeResult = await Prober().probe(*roundtrip(path, tls_ca, authserv_id="mx.test"))
    assert result.success, describe(result)
    assert names(result) == SMTP_PHASES + IMAP_PHASES
    delivery = result.delivery
    assert delivery is not None
    assert delivery.token.startswith("roundtrip ") and delivery.message_id.startswith("<smtp-exporter.")
    assert delivery.token.split()[2] in delivery.message_id
    # From the 250 to the message in the mailbox: under the deadline, and the delivery phase's.
    assert delivery.duration_seconds is not None and 0 < delivery.duration_seconds < 5
    phase = result.phase(Phase.DELIVERY)
    assert phase is not None and phase.duration_seconds == delivery.duration_seconds
    # Postfix's smtpd and Dovecot's LMTP each add one; dated to the second, in order.
    assert delivery.hops == 2
    assert delivery.received_span_seconds is not None and 0 <= delivery.received_span_seconds <= 2
    # authserv_id: mx.test picks that header, though another authserv-id's is on top.
    assert dict(delivery.authentication_results) == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}
    assert delivery.cleaned_up == 1
    assert probe_messages(path) == []
    document = probe_json(result)["delivery"]
    assert set(document) == {
        "message_id",
        "token",
        "duration_seconds",
        "hops",
        "received_span_seconds",
        "authentication_results",
        "cleaned_up",
    }
    assert document["authentication_results"] == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}
    served = render_probe_result(result, openmetrics=False).decode()
    assert "smtp_delivery_success 1\n" in served and "smtp_delivery_hops 2\n" in served
    assert f"smtp_delivery_duration_seconds {delivery.duration_seconds!r}\n" in served
    assert 'smtp_delivery_authentication_result{method="dkim",result="pass"} 1\n' in served
    assert 'smtp_probe_phase_duration_seconds{phase="imap_login"}' in served
    state = SeriesState(
        (("target", "t"), ("module", "roundtrip")),
        buckets=Buckets((1.0,)),
        phase_histograms=False,
        delivery_buckets=Buckets((1.0, 1800.0)),
    )
    lines = series_text(state, result)
    below = 1 if delivery.duration_seconds <= 1.0 else 0
    assert (
        f'smtp_delivery_duration_distribution_seconds_bucket{{target="t",module="roundtrip",le="1.0"}} {below}\n'
        in lines
    )
    assert 'smtp_delivery_duration_distribution_seconds_count{target="t",module="roundtrip"} 1\n' in lines
    text = "\n".join(line.text for line in result.transcript)
    assert path.dovecot.password not in text and "LOGIN" in text and "<redacted>" in text
    assert "IDLE" in text


async def test_without_authserv_id_the_topmost_header_counts(
    mail_path: Callable[..., MailPath], tls_ca: TestCA
) -> None:
    path = mail_path()
    result = await Prober().probe(*roundtrip(path, tls_ca))
    assert result.success, describe(result)
    assert result.delivery is not None
    assert dict(result.delivery.authentication_results) == {"spf": "fail", "dkim": "none"}


async def test_polling_without_idle_and_starttls_on_143(
    mail_path: Callable[..., MailPath], tls_ca: TestCA
) -> None:
    path = mail_path(idle=False)
    imap = {"port": path.dovecot.imap_port, "implicit_tls": False, "starttls": StartTLS.REQUIRED}
    result = await Prober().probe(*roundtrip(path, tls_ca, imap=imap))
    assert result.success, describe(result)
    assert names(result) == SMTP_PHASES + IMAP_PHASES
    text = "\n".join(line.text for line in result.transcript)
    assert " IDLE" not in text.replace("SEARCH every", "") and "NOOP" in text and "STARTTLS" in text
    assert result.delivery is not None and result.delivery.hops == 2
    assert probe_messages(path) == []


async def test_a_wrong_imap_password_is_auth_failed_in_imap_login(
    mail_path: Callable[..., MailPath], tls_ca: TestCA
) -> None:
    path = mail_path()
    result = await Prober().probe(*roundtrip(path, tls_ca, imap={"password": Secret("wrong")}))
    assert not result.success
    assert result.failure is not None
    assert (result.failure.phase, result.failure.reason) == (Phase.IMAP_LOGIN, FailureReason.AUTH_FAILED)
    assert names(result) == [*SMTP_PHASES, "imap_connect", "imap_tls"]
    assert result.delivery is not None and result.delivery.duration_seconds is None


async def test_a_deferring_relay_is_not_delivered_and_the_next_probe_cleans_the_leftover(
    mail_path: Callable[..., MailPath], tls_ca: TestCA
) -> None:
    # The first probe's message never arrives in time (Postfix defers it). It then lands in the
    # mailbox, as a late delivery would, and the next probe removes it (older than
    # delivery.timeout by its token), beside what it must never touch: a user's message, a
    # younger message of the same module (another exporter's, still waited for), and an old one
    # of another module.
    deferring = mail_path(deliver=False)
    dovecot = deferring.dovecot
    started = time.monotonic()
    result = await Prober().probe(*roundtrip(deferring, tls_ca, timeout=3.0))
    waited = time.monotonic() - started
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.DELIVERY, FailureReason.NOT_DELIVERED)
    assert 3.0 <= waited < 8.0
    assert "delivery" not in names(result) and names(result)[-1] == "imap_select"
    assert result.delivery is not None and result.delivery.duration_seconds is None
    served = render_probe_result(result, openmetrics=False).decode()
    assert "smtp_delivery_success 0\n" in served and "smtp_delivery_duration_seconds" not in served
    assert 'smtp_probe_last_failure_info{phase="delivery",reason="not_delivered"} 1' in served
    deferring.postfix.wait_log(r"status=deferred \(deferred transport\)")
    deferring.postfix.stop()  # it can deliver nothing late while the next probe runs

    now = int(time.time())
    kept = [
        _probe_message("roundtrip", now, "young"),
        _probe_message("other-module", now - 3600, "old"),
    ]
    with smtplib.LMTP(dovecot.lmtp_socket) as lmtp:
        for message in [_probe_message(*result.delivery.token.split()), *kept, USER_MESSAGE]:
            lmtp.sendmail("probe@example.org", [dovecot.username], message)
    tokens = [email.message_from_bytes(m)[TOKEN_HEADER] for m in probe_messages(deferring)]
    late = tokens.count(result.delivery.token)  # one, or two should Postfix have let it go after all
    assert late >= 1 and len(tokens) == late + 2

    relaying = mail_path(dovecot=dovecot)
    second = await Prober().probe(*roundtrip(relaying, tls_ca, timeout=3.0))
    assert second.success, describe(second)
    assert second.delivery is not None and second.delivery.cleaned_up == late + 1
    remaining = sorted(dovecot.messages())
    assert len(remaining) == 3
    assert sum(b"Subject: lunch" in m for m in remaining) == 1
    tokens = sorted(email.message_from_bytes(m)[TOKEN_HEADER] or "" for m in probe_messages(relaying))
    assert tokens == sorted([f"other-module {now - 3600} old", f"roundtrip {now} young"])


USER_MESSAGE = (
    b"From: friend@example.net\r\nTo: probe-inbox@example.org\r\nSubject: lunch\r\n"
    # A user's message that mentions the probe's header in its body is not a probe message.
    b"\r\nX-SMTP-Exporter-Probe: roundtrip 1 not-a-header\r\n"
)


def _probe_message(module_name: str, timestamp: int | str, unique: str) -> bytes:
    return (
        f"Message-ID: <{unique}@probe.test>\r\n{TOKEN_HEADER}: {module_name} {timestamp} {unique}\r\n"
        f"Subject: probe\r\n\r\nprobe\r\n"
    ).encode()
