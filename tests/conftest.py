"""Fixtures for real peers on loopback; the servers themselves live in tests/servers/.

Instances (function-scoped, started on port 0, stopped at teardown):
  smtp_server       plain aiosmtpd              starttls_server   aiosmtpd offering STARTTLS
  smtps_server      aiosmtpd with implicit TLS  auth_server       STARTTLS + AUTH (TEST_USERNAME/PASSWORD)
  smtp_sink         Postfix smtp-sink, defaults, capture on
Factories (call them in the test; everything started is stopped at teardown):
  smtp_server_factory(**AiosmtpdServer options)
  fault_server(phase, code=451, enhanced="4.3.0", text=..., close=False, **AiosmtpdServer options)
  smtp_sink_factory(**SmtpSink options)
  postfix_factory(**PostfixSmtpd options)                    (a real Postfix: master, smtpd, queue)
  await scripted_server(script, hosts=("127.0.0.1",))       (async; runs on the test's loop)
  dns_server(records, **DnsServer options)
  dnssec_lab_factory()      a new, not yet started DnssecLab (nsd + validating unbound, signed
                            zones; tests/servers/dnssec.py): add records, then `.start()`
Module-scoped: dnssec_lab, a started DnssecLab shared by one test module (add records under names
  of your own test, then `lab.reload()`).
Session-scoped: tls_ca, a trustme `TestCA` (tls_ca.ca_file is the CA's PEM path).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.servers.aiosmtpd_server import TEST_PASSWORD, TEST_USERNAME, AiosmtpdServer, Fault
from tests.servers.dns_server import DnsServer, Records
from tests.servers.dnssec import DnssecLab
from tests.servers.postfix_smtpd import PostfixSmtpd
from tests.servers.scripted import Script, ScriptedServer
from tests.servers.smtp_sink import SmtpSink
from tests.servers.tls import TestCA

# In CI (CI=true), property tests replay the same examples every run: a submission lands or not
# on its own merits, not on what a new random seed happens to find. Elsewhere they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """One CA for the session: immutable, and issuing certificates never overwrites files."""
    return TestCA(Path(tmp_path_factory.mktemp("tls-ca")))


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., AiosmtpdServer]]:
    started: list[AiosmtpdServer] = []

    def make(**options: Any) -> AiosmtpdServer:
        server = AiosmtpdServer(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., AiosmtpdServer]) -> AiosmtpdServer:
    return smtp_server_factory()


@pytest.fixture
def starttls_server(smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA) -> AiosmtpdServer:
    return smtp_server_factory(starttls=tls_ca.server_cert)


@pytest.fixture
def smtps_server(smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA) -> AiosmtpdServer:
    return smtp_server_factory(implicit_tls=tls_ca.server_cert)


@pytest.fixture
def auth_server(smtp_server_factory: Callable[..., AiosmtpdServer], tls_ca: TestCA) -> AiosmtpdServer:
    """STARTTLS, then AUTH PLAIN/LOGIN/CRAM-MD5 for TEST_USERNAME / TEST_PASSWORD."""
    return smtp_server_factory(starttls=tls_ca.server_cert, auth_users={TEST_USERNAME: TEST_PASSWORD})


@pytest.fixture
def fault_server(smtp_server_factory: Callable[..., AiosmtpdServer]) -> Callable[..., AiosmtpdServer]:
    """fault_server("rcpt", 550, "5.1.1") -> a server answering `550 5.1.1 Injected fault` at RCPT."""

    def make(
        phase: str,
        code: int = 451,
        enhanced: str | None = "4.3.0",
        text: str = "Injected fault",
        *,
        close: bool = False,
        **options: Any,
    ) -> AiosmtpdServer:
        return smtp_server_factory(faults=[Fault(phase, code, enhanced, text, close)], **options)

    return make


@pytest.fixture
def smtp_sink_factory() -> Iterator[Callable[..., SmtpSink]]:
    started: list[SmtpSink] = []

    def make(**options: Any) -> SmtpSink:
        sink = SmtpSink(**options).start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


@pytest.fixture
def smtp_sink(smtp_sink_factory: Callable[..., SmtpSink]) -> SmtpSink:
    return smtp_sink_factory(capture=True)


@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., PostfixSmtpd]]:
    started: list[PostfixSmtpd] = []

    def make(**options: Any) -> PostfixSmtpd:
        postfix = PostfixSmtpd(**options).start()
        started.append(postfix)
        return postfix

    yield make
    for postfix in started:
        postfix.stop()


@pytest.fixture
async def scripted_server() -> AsyncIterator[Callable[..., Awaitable[ScriptedServer]]]:
    started: list[ScriptedServer] = []

    async def make(script: Script | Callable[[int], Script], **options: Any) -> ScriptedServer:
        server = await ScriptedServer(script, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
def dns_server() -> Iterator[Callable[..., DnsServer]]:
    started: list[DnsServer] = []

    def make(records: Records, **options: Any) -> DnsServer:
        server = DnsServer(records, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def dnssec_lab_factory() -> Iterator[Callable[[], DnssecLab]]:
    made: list[DnssecLab] = []

    def make() -> DnssecLab:
        made.append(DnssecLab())
        return made[-1]

    yield make
    for lab in made:
        lab.stop()


@pytest.fixture(scope="module")
def dnssec_lab() -> Iterator[DnssecLab]:
    with DnssecLab() as lab:
        yield lab
