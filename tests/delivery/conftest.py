"""A real mail path on loopback: a private Postfix (submission with STARTTLS on a port the kernel
chose) relaying every message over LMTP to a private Dovecot, whose mailbox the delivery check
reads over IMAP. `header_checks` PREPENDs Authentication-Results headers on the way, as a
receiving boundary's filter would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from smtp_exporter.protocol.message import TOKEN_HEADER
from tests.servers.dovecot import Dovecot
from tests.servers.postfix_smtpd import PostfixSmtpd
from tests.servers.tls import TestCA

# Prepended before To: (so the topmost, another authserv-id's) and before Subject: (ours).
HEADER_CHECKS = """\
/^To:/ PREPEND Authentication-Results: other.test; spf=fail smtp.mailfrom=example.org; dkim=none
/^Subject:/ PREPEND Authentication-Results: mx.test; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org; dmarc=pass header.from=example.org
"""


def relaying_to(
    dovecot: Dovecot, directory: Path, *, deliver: bool = True, hold_module: str | None = None
) -> dict[str, str]:
    """Postfix's main.cf settings relaying every message over LMTP to `dovecot` (deliver=False:
    held in the queue by defer_transports), through HEADER_CHECKS (written into `directory`).
    `hold_module`: that module's probe messages (their token header) go on hold, until
    `PostfixSmtpd.release` lets them through; the other modules' messages pass at once."""
    checks = directory / "header_checks"
    # (A module name's only regular-expression character is the dot; `-` is literal here.)
    hold = f"/^{TOKEN_HEADER}: {hold_module.replace('.', '[.]')} / HOLD\n" if hold_module else ""
    checks.write_text(hold + HEADER_CHECKS)
    return {
        "default_transport": f"lmtp:unix:{dovecot.lmtp_socket}",
        # A transport that defers: mail waits in the queue (until `postqueue -f`).
        "defer_transports": "" if deliver else "lmtp",
        "header_checks": f"regexp:{checks}",
        # No reverse lookups of the loopback client.
        "smtpd_peername_lookup": "no",
    }


class MailPath(NamedTuple):
    postfix: PostfixSmtpd
    dovecot: Dovecot


@pytest.fixture
def mail_path(
    postfix_factory: Callable[..., PostfixSmtpd], tls_ca: TestCA, tmp_path: Path
) -> Iterator[Callable[..., MailPath]]:
    """make(deliver=True, dovecot=None, **dovecot_options): a Dovecot (or `dovecot`), then a
    Postfix relaying to it (deliver=False: Postfix's defer_transports holds every message in its queue)."""
    started: list[Dovecot] = []

    def make(*, deliver: bool = True, dovecot: Dovecot | None = None, **dovecot_options: Any) -> MailPath:
        if dovecot is None:
            dovecot = Dovecot(tls_ca.server_cert, **dovecot_options).start()
            started.append(dovecot)
        postfix = postfix_factory(
            tls=tls_ca.server_cert, main_cf=relaying_to(dovecot, tmp_path, deliver=deliver)
        )
        return MailPath(postfix, dovecot)

    yield make
    for dovecot in started:
        dovecot.stop()
