"""Failed handshakes under both event loops: the fatal alert the probe owes a server whose
certificate it rejects (RFC 8446 section 6.2), and the facts of a handshake the server aborts.

The peer is the scripted server, under the same event loop as the probe (asyncio, or uvloop as
the exporter uses when installed). Its TLS context's message callback records every alert record
it reads after decryption (TLS 1.3 encrypts alerts after the ServerHello), as OpenSSL parsed it:
content type 21, level, description.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from smtp_exporter.config.schema import TLSConfig
from smtp_exporter.model import FailureReason, Phase, ProbeResult
from smtp_exporter.probe import Prober
from tests.helpers import require_module
from tests.probe.common import compiled, describe, module, trusting
from tests.probe.test_tls import assert_facts_of
from tests.servers import scripted
from tests.servers.scripted import ScriptedConnection, ScriptedServer
from tests.servers.tls import ServerCert, TestCA

T = TypeVar("T")

ALERT = 21  # TLS ContentType alert
FATAL = 2  # AlertLevel fatal
# AlertDescription (RFC 8446 section 6.2)
BAD_CERTIFICATE = 42
CERTIFICATE_EXPIRED = 45
UNKNOWN_CA = 48

# name: (certificate, trust the test CA, the alert OpenSSL chooses, the verifier's words)
REJECTED: dict[str, tuple[Callable[[TestCA], ServerCert], bool, int, str]] = {
    "unknown_ca": (lambda ca: ca.server_cert, False, UNKNOWN_CA, "unable to get local issuer certificate"),
    "expired": (TestCA.expired, True, CERTIFICATE_EXPIRED, "certificate has expired"),
}


class AlertRecorder:
    """The alerts a server-side context read, as (content type, level, description)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.read: list[tuple[int, int, int]] = []
        # The ssl module's debugging hook (private but stable since 3.8): OpenSSL's msg_callback.
        context._msg_callback = self._message  # type: ignore[attr-defined]

    def _message(self, conn: object, direction: str, version: object, content_type: int, *rest: Any) -> None:
        data: bytes = rest[-1]
        if direction == "read" and content_type == ALERT and len(data) == 2:
            self.read.append((int(content_type), data[0], data[1]))


def run_on(loop: str, scenario: Coroutine[Any, Any, T]) -> T:
    """Probe and peer on one loop of the kind named: asyncio's own, or uvloop's."""
    if loop == "uvloop":
        uvloop = require_module("uvloop")
        result: T = uvloop.run(scenario)
        return result
    return asyncio.run(scenario)


async def probe_rejecting(
    cert: ServerCert, tls_config: TLSConfig, *, implicit: bool, tls_version: ssl.TLSVersion
) -> tuple[ProbeResult, ScriptedConnection, AlertRecorder]:
    context = cert.server_context()
    context.minimum_version = context.maximum_version = tls_version
    alerts = AlertRecorder(context)
    steps = [scripted.StartTLS(context)] if implicit else scripted.starttls_conversation(context)
    async with ScriptedServer(steps) as server:
        base = "smtps_handshake" if implicit else "smtp_handshake"
        probe_module = module(base, port=server.port, tls_config=tls_config, timeout=3.0)
        result = await Prober().probe(*compiled(server.target, "m", probe_module))
        assert await server.wait_closed(3.0)
        (connection,) = server.connections
        return result, connection, alerts


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize(
    "tls_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"]
)
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_certificate_gets_a_fatal_alert(
    tls_ca: TestCA, case: str, implicit: bool, tls_version: ssl.TLSVersion, loop: str
) -> None:
    make_cert, trust_ca, description, verify_message = REJECTED[case]
    cert = make_cert(tls_ca)
    tls_config = trusting(tls_ca) if trust_ca else TLSConfig()

    async def scenario() -> tuple[ProbeResult, ScriptedConnection, AlertRecorder]:
        return await probe_rejecting(cert, tls_config, implicit=implicit, tls_version=tls_version)

    result, connection, alerts = run_on(loop, scenario())

    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_CERT_INVALID)
    assert verify_message in result.failure.message
    assert result.tls is not None and result.tls.verified is False
    if tls_version is ssl.TLSVersion.TLSv1_3:  # TLS 1.2 names its version only once finished
        assert result.tls.version == "TLSv1.3"
    assert_facts_of(result.tls, cert)
    # The server heard why: one fatal alert with OpenSSL's description, before the connection closed.
    assert alerts.read == [(ALERT, FATAL, description)], connection.error
    assert connection.error is not None and "ALERT" in connection.error, connection.error


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
def test_facts_of_an_aborted_handshake_on_either_loop(tls_ca: TestCA, implicit: bool, loop: str) -> None:
    """The TLS 1.2 server demanding a client certificate (tests/probe/test_tls.py) aborts after its
    Certificate: uvloop runs the handshake in a context copied when the transport was made."""
    context = tls_ca.server_cert.server_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED

    async def scenario() -> ProbeResult:
        steps = [scripted.StartTLS(context)] if implicit else scripted.starttls_conversation(context)
        async with ScriptedServer(steps) as server:
            base = "smtps_handshake" if implicit else "smtp_handshake"
            probe_module = module(base, port=server.port, tls_config=trusting(tls_ca), timeout=3.0)
            return await Prober().probe(*compiled(server.target, "m", probe_module))

    result = run_on(loop, scenario())
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_HANDSHAKE_FAILED)
    assert result.tls is not None, describe(result)
    assert result.tls.verified is False
    assert_facts_of(result.tls, tls_ca.server_cert)
