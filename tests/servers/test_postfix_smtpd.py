"""Self-tests of the real Postfix fixture (tests/servers/postfix_smtpd.py), with plain clients."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers.postfix_smtpd import PostfixError, PostfixSmtpd, _live_members
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA

MESSAGE = b"Subject: test\r\n\r\nthrough a real Postfix queue\r\n"


def test_postfix_offers_starttls_with_the_test_certificate(
    postfix_factory: Callable[..., PostfixSmtpd], tls_ca: TestCA
) -> None:
    postfix = postfix_factory(tls=tls_ca.server_cert)
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        code, banner = client.ehlo("probe.test")
        assert code == 250 and b"STARTTLS" in banner
        assert client.starttls(context=tls_ca.client_context())[0] == 220
        code, after = client.ehlo("probe.test")
        assert code == 250 and b"STARTTLS" not in after
        assert client.sock is not None
        assert client.sock.getpeercert()["subject"] is not None  # type: ignore[union-attr]
    postfix.wait_log(r"Anonymous TLS connection established|TLS connection established from")


def test_postfix_without_tls_offers_no_starttls(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(hostname="other.test")
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        code, text = client.ehlo("probe.test")
    assert code == 250 and b"STARTTLS" not in text
    assert text.startswith(b"other.test")


def test_postfix_main_cf_and_smtpd_options_override_the_defaults(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    postfix = postfix_factory(
        main_cf={"smtpd_banner": "$myhostname ESMTP overridden"},
        smtpd_options={"smtpd_client_restrictions": "reject"},
    )
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        assert client.ehlo("probe.test")[0] == 250
        assert client.mail("from@example.test")[0] == 250
        code, _ = client.rcpt("to@example.org")
    assert code == 554  # smtpd_client_restrictions = reject (given with -o), applied at RCPT
    with socket.create_connection(postfix.address, timeout=5) as sock:
        assert sock.recv(512) == b"220 mail.test ESMTP overridden\r\n"


def test_postfix_relays_through_its_queue(
    postfix_factory: Callable[..., PostfixSmtpd], smtp_sink: SmtpSink
) -> None:
    postfix = postfix_factory(
        main_cf={"default_transport": "smtp", "relayhost": f"[127.0.0.1]:{smtp_sink.port}"}
    )
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        client.sendmail("from@example.test", ["to@example.org"], MESSAGE)
    # status=sent: Postfix has read the sink's reply to the final dot, so the sink's dump file
    # (opened when the transaction starts) is complete. The recipient is checked here, in
    # Postfix's log: the sink does not always record RCPT's arguments.
    postfix.wait_log(r"to=<to@example\.org>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+.*status=sent", 15)
    (message,) = smtp_sink.messages()
    assert message.content.endswith(b"\n\nthrough a real Postfix queue\n")


def test_postfix_holds_by_header_checks_until_released(
    postfix_factory: Callable[..., PostfixSmtpd], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    checks = tmp_path / "header_checks"
    checks.write_text("/^Subject: hold me/ HOLD\n")
    postfix = postfix_factory(
        main_cf={
            "default_transport": "smtp",
            "relayhost": f"[127.0.0.1]:{smtp_sink.port}",
            "header_checks": f"regexp:{checks}",
        }
    )
    assert postfix.held() == []
    held_message = b"Subject: hold me\r\n\r\nheld\r\n"
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        client.sendmail("from@example.test", ["to@example.org"], held_message)
        client.sendmail("from@example.test", ["to@example.org"], MESSAGE)
        client.sendmail("from@example.test", ["to@example.org"], held_message)
    postfix.wait_log(r"status=sent", 15)  # the sink's dump of it is complete (see above)
    (passed,) = smtp_sink.messages()
    assert passed.content.endswith(b"through a real Postfix queue\n")
    held = postfix.held()
    assert len(held) == 2
    for queue_id in held:
        postfix.wait_log(rf"{queue_id}: hold: header Subject: hold me")
    assert len(smtp_sink.messages()) == 1
    postfix.release(*held)
    for queue_id in held:
        postfix.wait_log(rf"{queue_id}: to=<to@example\.org>, .*status=sent", 15)
    released = smtp_sink.messages()[1:]
    assert [m.content.endswith(b"\n\nheld\n") for m in released] == [True, True]
    assert postfix.held() == []
    postfix.release(*held)  # released already: no error


def test_postfix_delivers_nothing_outside_the_test_by_default(
    postfix_factory: Callable[..., PostfixSmtpd],
) -> None:
    postfix = postfix_factory()
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        assert client.mail("from@example.test")[0] == 250
        code, text = client.rcpt("to@example.org")
    assert (code, text) == (
        550,
        b"5.1.1 <to@example.org>: Recipient address rejected: outbound delivery is disabled in tests",
    )


def test_postfix_on_ipv6_loopback(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory(host="::1")
    assert postfix.target == f"[::1]:{postfix.port}"
    with socket.create_connection(postfix.address, timeout=5) as sock:
        assert sock.recv(512).startswith(b"220 mail.test ")


def test_postfix_bad_setting_is_a_clear_error() -> None:
    with pytest.raises(PostfixError, match=r"(?s)master exited with 1.*inet_protocols = ipx"):
        PostfixSmtpd(main_cf={"inet_protocols": "ipx"}).start()


def test_postfix_stop_ends_master_and_its_daemons(postfix_factory: Callable[..., PostfixSmtpd]) -> None:
    postfix = postfix_factory()
    with smtplib.SMTP(*postfix.address, timeout=5) as client:
        client.ehlo("probe.test")
    master = postfix.pid
    assert master is not None and len(_live_members(master)) > 1  # master, qmgr, pickup, smtpd...
    directory = postfix.queue_directory.parent
    postfix.stop()
    assert postfix.returncode is not None
    assert not _live_members(master)
    assert not directory.exists()
    with pytest.raises(OSError):
        socket.create_connection(postfix.address, timeout=1).close()
