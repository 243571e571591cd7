"""STARTTLS and implicit TLS against real servers with a trustme CA, good and bad certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from smtp_exporter.config.schema import ModuleConfig, StartTLS, TLSConfig
from smtp_exporter.model import FailureReason, Phase, ProbeResult, TLSInfo
from smtp_exporter.presentation import probe_json
from smtp_exporter.probe import Prober
from tests.helpers import require_module
from tests.probe.common import Stopwatch, compiled, describe, module, names, trusting
from tests.servers import scripted
from tests.servers.aiosmtpd_server import AiosmtpdServer
from tests.servers.scripted import BANNER, EHLO_STARTTLS_REPLY, ExpectLine, ScriptedServer, Send
from tests.servers.tls import ServerCert, TestCA

ServerFactory = Callable[..., AiosmtpdServer]
ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]


def assert_facts_of(tls: TLSInfo, cert: ServerCert) -> None:
    """The TLS facts describe exactly this certificate (computed here independently)."""
    leaf = cert.certificate
    assert tls.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert tls.cert_not_before_timestamp == leaf.not_valid_before_utc.timestamp()
    assert tls.cert_not_after_timestamp == leaf.not_valid_after_utc.timestamp()
    assert tls.subject == leaf.subject.rfc4514_string()
    assert tls.issuer == leaf.issuer.rfc4514_string()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    expected = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
    assert sorted(tls.sans) == sorted(expected)


def assert_session(tls: TLSInfo) -> None:
    assert tls.version in ("TLSv1.2", "TLSv1.3")
    assert tls.cipher and tls.cipher != "unknown"


async def test_starttls_auto_used_when_offered(starttls_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    result = await Prober().probe(
        *compiled(starttls_server.target, "m", module(port=starttls_server.port, tls_config=trusting(tls_ca)))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"]
    starttls = result.phase(Phase.STARTTLS)
    assert starttls is not None and starttls.reply_code == 220
    assert result.tls is not None
    assert result.tls.verified is True
    assert result.tls.verify_error is None
    assert_session(result.tls)
    assert_facts_of(result.tls, tls_ca.server_cert)
    # Extensions are what the server offered before and inside TLS: STARTTLS is only offered in
    # the clear (RFC 3207), yet it is part of what this server offers.
    assert "STARTTLS" in dict(result.server.extensions)
    assert "SIZE" in dict(result.server.extensions)
    assert await starttls_server.wait_closed()
    (connection,) = starttls_server.connections
    assert connection.tls
    assert bytes(connection.received).endswith(b"EHLO probe.test\r\nQUIT\r\n")


async def test_starttls_auto_plain_when_not_offered(smtp_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    result = await Prober().probe(
        *compiled(smtp_server.target, "m", module(port=smtp_server.port, tls_config=trusting(tls_ca)))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "quit"]
    assert result.tls is None
    assert b"STARTTLS" not in bytes(smtp_server.connections[0].received)


async def test_starttls_required_but_not_offered(smtp_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    result = await Prober().probe(
        *compiled(
            smtp_server.target,
            "m",
            module(
                "smtp_full", port=smtp_server.port, starttls=StartTLS.REQUIRED, tls_config=trusting(tls_ca)
            ),
        ),
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (
        Phase.STARTTLS,
        FailureReason.STARTTLS_NOT_OFFERED,
    )
    assert names(result) == ["connect", "banner", "ehlo"]
    assert result.tls is None
    # No MAIL in clear text; a polite QUIT instead.
    assert bytes(smtp_server.connections[0].received) == b"EHLO probe.test\r\nQUIT\r\n"
    assert await smtp_server.wait_closed()


async def test_starttls_never_even_if_offered(starttls_server: AiosmtpdServer) -> None:
    result = await Prober().probe(
        *compiled(starttls_server.target, "m", module(port=starttls_server.port, starttls=StartTLS.NEVER))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "quit"]
    assert result.tls is None
    assert "STARTTLS" in dict(result.server.extensions)
    (connection,) = starttls_server.connections
    assert not connection.tls
    assert b"STARTTLS" not in bytes(connection.received)


async def test_implicit_tls(smtps_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    result = await Prober().probe(
        *compiled(
            smtps_server.target,
            "smtps",
            module("smtps_handshake", port=smtps_server.port, tls_config=trusting(tls_ca)),
        ),
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "tls", "banner", "ehlo", "quit"]
    assert result.tls is not None and result.tls.verified
    assert_session(result.tls)
    assert_facts_of(result.tls, tls_ca.server_cert)
    assert result.server.banner is not None and result.server.banner.startswith("mail.test")
    assert await smtps_server.wait_closed()


async def test_server_name_overrides_the_verified_name(
    smtp_server_factory: ServerFactory, tls_ca: TestCA
) -> None:
    cert = tls_ca.wrong_host()
    server = smtp_server_factory(starttls=cert)
    result = await Prober().probe(
        *compiled(
            server.target,
            "m",
            module(port=server.port, tls_config=trusting(tls_ca, server_name="wrong.example")),
        ),
    )
    assert result.success, describe(result)
    assert result.tls is not None and result.tls.verified
    assert result.tls.sans == ("wrong.example",)


BAD_CERTIFICATES: dict[str, tuple[Callable[[TestCA], ServerCert], bool, str]] = {
    # name: (certificate, trust the test CA, what the verifier says)
    "expired": (TestCA.expired, True, "certificate has expired"),
    "not_yet_valid": (TestCA.not_yet_valid, True, "certificate is not yet valid"),
    "wrong_host": (TestCA.wrong_host, True, "IP address mismatch"),
    "self_signed": (lambda ca: ca.self_signed(), True, "self-signed certificate"),
    "unknown_ca": (lambda ca: ca.server_cert, False, "unable to get local issuer certificate"),
}


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
@pytest.mark.parametrize("case", list(BAD_CERTIFICATES))
async def test_invalid_certificate_reported_with_its_facts(
    smtp_server_factory: ServerFactory, tls_ca: TestCA, case: str, implicit: bool
) -> None:
    make_cert, trust_ca, verify_message = BAD_CERTIFICATES[case]
    cert = make_cert(tls_ca)
    tls_config = trusting(tls_ca) if trust_ca else TLSConfig()
    if implicit:
        server = smtp_server_factory(implicit_tls=cert)
        probe_module = module("smtps_handshake", port=server.port, tls_config=tls_config, timeout=3.0)
        before_tls = ["connect"]
    else:
        server = smtp_server_factory(starttls=cert)
        probe_module = module(port=server.port, tls_config=tls_config, timeout=3.0)
        before_tls = ["connect", "banner", "ehlo", "starttls"]

    result = await Prober().probe(*compiled(server.target, "m", probe_module))

    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_CERT_INVALID)
    assert verify_message in result.failure.message
    assert names(result) in (before_tls, [*before_tls, "tls"]), describe(result)
    tls = result.tls
    assert tls is not None, "TLS facts must be kept when verification fails"
    assert tls.verified is False
    assert tls.verify_error is not None and verify_message in tls.verify_error
    assert_facts_of(tls, cert)
    # TLS 1.3 (these servers' default) has chosen its cipher before the certificate is checked.
    assert tls.cipher.startswith("TLS_")
    assert (
        probe_json(result)["tls"]["cert_not_after_timestamp"]
        == cert.certificate.not_valid_after_utc.timestamp()
    )
    assert await server.wait_closed()
    # Nothing reached the server through the unverified session.
    if implicit:
        assert all(not c.received for c in server.connections)
    else:
        assert bytes(server.connections[0].received).endswith(b"STARTTLS\r\n")


async def test_tls13_version_known_when_verification_fails(
    smtp_server_factory: ServerFactory, tls_ca: TestCA
) -> None:
    server = smtp_server_factory(starttls=tls_ca.expired())
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, tls_config=trusting(tls_ca)))
    )
    assert result.failure is not None and result.failure.reason is FailureReason.TLS_CERT_INVALID
    assert result.tls is not None
    assert result.tls.version == "TLSv1.3"


async def test_expired_certificate_not_after_is_in_the_past(
    smtp_server_factory: ServerFactory, tls_ca: TestCA
) -> None:
    """What an operator sees: an expired certificate, not a dead server."""
    server = smtp_server_factory(starttls=tls_ca.expired())
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, tls_config=trusting(tls_ca)))
    )
    assert result.tls is not None and result.tls.cert_not_after_timestamp is not None
    assert result.tls.cert_not_after_timestamp < result.start_timestamp - 86400
    assert result.server.banner is not None  # it answered: alive, with a bad certificate


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
async def test_insecure_skip_verify(
    smtp_server_factory: ServerFactory, tls_ca: TestCA, implicit: bool
) -> None:
    cert = tls_ca.expired()
    tls_config = TLSConfig(insecure_skip_verify=True)
    if implicit:
        server = smtp_server_factory(implicit_tls=cert)
        probe_module: ModuleConfig = module("smtps_handshake", port=server.port, tls_config=tls_config)
    else:
        server = smtp_server_factory(starttls=cert)
        probe_module = module(port=server.port, tls_config=tls_config, starttls=StartTLS.REQUIRED)
    result = await Prober().probe(*compiled(server.target, "m", probe_module))
    assert result.success, describe(result)
    assert "tls" in names(result)
    assert result.tls is not None
    assert result.tls.verified is False
    assert result.tls.verify_error is None
    assert_facts_of(result.tls, cert)


async def test_min_version_refused_by_server(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    """A server that speaks at most TLS 1.2, a module that wants 1.3: the handshake fails."""
    context = tls_ca.server_cert.server_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = await scripted_server(scripted.starttls_conversation(context))
    result = await Prober().probe(
        *compiled(
            server.target, "m", module(port=server.port, tls_config=trusting(tls_ca, min_version="TLS13"))
        )
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_HANDSHAKE_FAILED)
    assert await server.wait_closed()


async def test_scripted_starttls_conversation_succeeds(
    scripted_server: ScriptedFactory, tls_ca: TestCA
) -> None:
    """The control for the broken STARTTLS servers below: the same script, speaking TLS."""
    server = await scripted_server(scripted.starttls_conversation(tls_ca.server_cert.server_context()))
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, tls_config=trusting(tls_ca)))
    )
    assert result.success, describe(result)
    assert names(result) == ["connect", "banner", "ehlo", "starttls", "tls", "ehlo_tls", "quit"]
    assert server.connections[0].tls


async def test_starttls_220_then_plaintext(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(scripted.starttls_no_tls())
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(server.target, "m", module(port=server.port, tls_config=trusting(tls_ca), timeout=2.0))
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_HANDSHAKE_FAILED)
    assert names(result) == ["connect", "banner", "ehlo", "starttls"]
    assert result.duration_seconds < 2.0 and watch.seconds < 2.5
    assert await server.wait_closed()


async def test_starttls_220_then_silence(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(scripted.starttls_no_tls(reply=None))
    timeout = 1.0
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(
                server.target, "m", module(port=server.port, tls_config=trusting(tls_ca), timeout=timeout)
            )
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TIMEOUT)
    assert names(result) == ["connect", "banner", "ehlo", "starttls"]
    assert result.duration_seconds < timeout + 0.5
    assert watch.seconds < timeout + 1.0
    assert await server.wait_closed(2.0)
    assert server.connections[0].client_closed


@pytest.mark.parametrize(
    "injected",
    [b"250 2.0.0 injected reply\r\n", b"250 2.0.0 partial"],
    ids=["whole-reply", "partial-line"],
)
async def test_data_after_starttls_reply_is_refused(
    scripted_server: ScriptedFactory, tls_ca: TestCA, injected: bytes
) -> None:
    """CVE-2011-0411: bytes sent in clear after the 220 must not be read as if inside TLS."""
    server = await scripted_server(
        [
            Send(BANNER),
            ExpectLine(),
            Send(EHLO_STARTTLS_REPLY),
            ExpectLine(),
            Send(b"220 2.0.0 Ready to start TLS\r\n" + injected),  # one write: one segment
        ]
    )
    result = await Prober().probe(
        *compiled(server.target, "m", module(port=server.port, tls_config=trusting(tls_ca)))
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.STARTTLS, FailureReason.PROTOCOL_ERROR)
    assert "tls" not in names(result)
    assert result.tls is None
    assert await server.wait_closed()
    # The client never started a handshake over the tainted stream.
    assert b"\x16\x03" not in bytes(server.connections[0].received)


def _tls_facts(result: ProbeResult) -> TLSInfo:
    assert result.tls is not None, describe(result)
    return result.tls


async def test_certificate_facts_cached_across_probes_stay_right(
    smtp_server_factory: ServerFactory, tls_ca: TestCA
) -> None:
    """One Prober, two servers with different certificates, probed in turn and concurrently."""
    first_cert, second_cert = tls_ca.server_cert, tls_ca.issue()
    first = smtp_server_factory(starttls=first_cert)
    second = smtp_server_factory(starttls=second_cert)
    prober = Prober()
    results = await asyncio.gather(
        *(
            prober.probe(*compiled(server.target, "m", module(port=server.port, tls_config=trusting(tls_ca))))
            for server in (first, second, first, second)
        )
    )
    for result, cert in zip(results, (first_cert, second_cert, first_cert, second_cert), strict=True):
        assert_facts_of(_tls_facts(result), cert)


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
def test_certificate_facts_under_uvloop(
    smtp_server_factory: ServerFactory, tls_ca: TestCA, implicit: bool
) -> None:
    """The exporter runs on uvloop when installed: its own TLS layer must keep the facts too."""
    uvloop = require_module("uvloop")
    cert = tls_ca.expired()
    if implicit:
        server = smtp_server_factory(implicit_tls=cert)
        probe_module = module("smtps_handshake", port=server.port, tls_config=trusting(tls_ca))
    else:
        server = smtp_server_factory(starttls=cert)
        probe_module = module(port=server.port, tls_config=trusting(tls_ca))
    result: ProbeResult = uvloop.run(Prober().probe(*compiled(server.target, "m", probe_module)))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_CERT_INVALID)
    assert result.tls is not None
    assert result.tls.verify_error is not None and "certificate has expired" in result.tls.verify_error
    assert_facts_of(result.tls, cert)
    good = smtp_server_factory(starttls=tls_ca.server_cert)
    ok: ProbeResult = uvloop.run(
        Prober().probe(*compiled(good.target, "m", module(port=good.port, tls_config=trusting(tls_ca))))
    )
    assert ok.success, describe(ok)
    assert ok.tls is not None and ok.tls.verified
    assert_session(ok.tls)
    assert_facts_of(ok.tls, tls_ca.server_cert)


async def test_implicit_tls_against_a_plaintext_server(smtp_server: AiosmtpdServer, tls_ca: TestCA) -> None:
    """The smtps module pointed at port 25: a clear failure of the handshake, not a timeout."""
    result = await Prober().probe(
        *compiled(
            smtp_server.target,
            "m",
            module("smtps_handshake", port=smtp_server.port, tls_config=trusting(tls_ca)),
        )
    )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_HANDSHAKE_FAILED)
    assert names(result) == ["connect"]
    assert result.duration_seconds < 2.0
    assert await smtp_server.wait_closed()


async def test_implicit_tls_silent_server(scripted_server: ScriptedFactory, tls_ca: TestCA) -> None:
    server = await scripted_server(scripted.silence())
    async with Stopwatch.timing() as watch:
        result = await Prober().probe(
            *compiled(
                server.target,
                "m",
                module("smtps_handshake", port=server.port, tls_config=trusting(tls_ca), timeout=0.5),
            ),
        )
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TIMEOUT)
    assert result.duration_seconds < 1.0 and watch.seconds < 1.5
    assert await server.wait_closed(2.0)
    assert server.connections[0].client_closed


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
async def test_certificate_facts_kept_when_the_server_aborts_after_its_certificate(
    scripted_server: ScriptedFactory, tls_ca: TestCA, implicit: bool
) -> None:
    """A TLS 1.2 server that demands a client certificate aborts with an alert after its own
    Certificate went out (as OpenSMTPD with OpenSSL 3 does): the received certificate is reported."""
    context = tls_ca.server_cert.server_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    steps = [scripted.StartTLS(context)] if implicit else scripted.starttls_conversation(context)
    server = await scripted_server(steps)
    base = "smtps_handshake" if implicit else "smtp_handshake"
    probe_module = module(base, port=server.port, tls_config=trusting(tls_ca))
    result = await Prober().probe(*compiled(server.target, "m", probe_module))
    assert result.failure is not None, describe(result)
    assert (result.failure.phase, result.failure.reason) == (Phase.TLS, FailureReason.TLS_HANDSHAKE_FAILED)
    tls = result.tls
    assert tls is not None, f"the certificate received before the abort must be reported: {describe(result)}"
    assert tls.verified is False
    assert tls.version == "TLSv1.2"
    assert_facts_of(tls, tls_ca.server_cert)
    facts = probe_json(result)["tls"]
    assert facts["subject"] == tls_ca.server_cert.certificate.subject.rfc4514_string()
    assert facts["cert_not_after_timestamp"] == tls_ca.server_cert.certificate.not_valid_after_utc.timestamp()
