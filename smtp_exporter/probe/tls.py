"""Client TLS for probes: the certificate facts of a session (contexts: `tls_settings`).

The facts (dates, names, fingerprint) are wanted most when verification fails: an expired
certificate must not look like a dead server. OpenSSL keeps the peer's chain after a failed
verification, so an `SSLObject` subclass hooked into the context copies it onto the
exception before asyncio (or uvloop) tears the session down; the same holds for a handshake
the server aborts with an alert after sending its certificate. Verification itself stays
OpenSSL's, with its own error message; the fatal alert it chose goes to the server (see
`_ChainKeepingSSLObject._send_alert`).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any, NamedTuple

from cryptography import x509

from smtp_exporter.model import TLSInfo
from smtp_exporter.probe.x509_names import go_name_string

_DER = 2  # _ssl.ENCODING_DER: not exported by the ssl module
MAX_NAME_CHARS = 256
MAX_SANS = 32


class HandshakeState(NamedTuple):
    """What a failed handshake had learnt, attached to the exception as `peer_state`."""

    chain: tuple[bytes, ...]  # as presented, leaf first (unverified)
    version: str | None
    cipher: str | None


class HandshakeWatch:
    """Between a probe and the SSLObject of its current handshake, which asyncio and uvloop hide.

    The SSLObject registers here on its first do_handshake: a server that aborts after its
    Certificate (OpenSMTPD with OpenSSL 3) ends the handshake with a bare ConnectionResetError
    that carries none of what was received. And it finds here the plain transport under it, to
    send the fatal alert of a handshake it failed (see `_ChainKeepingSSLObject.do_handshake`)."""

    __slots__ = ("sslobj", "transport")

    def __init__(self) -> None:
        self.sslobj: ssl.SSLObject | None = None
        self.transport: asyncio.Transport | None = None

    def arm(self, transport: asyncio.Transport | None) -> None:
        """Before loop.start_tls on `transport`: the next SSLObject to start a handshake is its."""
        self.sslobj = None
        self.transport = transport


_watching: ContextVar[HandshakeWatch | None] = ContextVar("smtp_exporter_tls_watch", default=None)


class Watching:
    """Around the whole conversation, its connections' creation included: the first do_handshake runs
    in the context asyncio's start_tls copies from the probe's task, but uvloop's in the copy its
    transport took when created, which sees this (mutable) watch only if it was set by then. A
    class rather than a generator context manager: it is entered by every probe."""

    __slots__ = ("_token", "_watch")

    def __init__(self, watch: HandshakeWatch) -> None:
        self._watch = watch

    def __enter__(self) -> None:
        self._token = _watching.set(self._watch)

    def __exit__(self, *exc_info: object) -> None:
        _watching.reset(self._token)


def received_state(sslobj: ssl.SSLObject) -> HandshakeState:
    """What a handshake that broke off had received (the chain even when unverified)."""
    cipher = sslobj.cipher()
    return HandshakeState(
        _chain(sslobj, "get_unverified_chain"),
        sslobj.version() or (cipher[1] if cipher else None),
        cipher[0] if cipher else None,
    )


class _ChainKeepingSSLObject(ssl.SSLObject):
    _outgoing: ssl.MemoryBIO | None = None
    _watch: HandshakeWatch | None = None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any) -> Any:
        obj = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        obj._outgoing = outgoing  # where OpenSSL leaves the fatal alert of a failed handshake
        return obj

    def do_handshake(self) -> None:
        if self._watch is None:
            watch = _watching.get()
            if watch is not None and watch.sslobj is None:
                watch.sslobj = self
                self._watch = watch
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self._send_alert()
            if isinstance(exc, ssl.SSLCertVerificationError):
                exc.peer_state = received_state(self)  # type: ignore[attr-defined]
            raise

    def _send_alert(self) -> None:
        """RFC 8446 6.2: OpenSSL has left its fatal alert (unknown_ca, certificate_expired...) in
        the outgoing BIO, and asyncio's and uvloop's SSL protocols close the transport on a
        handshake error without sending it. Written now, to the plain transport under TLS, still
        open: with nothing queued both loops send at once, before the close that follows."""
        watch = self._watch
        transport = watch.transport if watch is not None else None
        if transport is not None and not transport.is_closing():
            pending = self._outgoing.read() if self._outgoing is not None else b""
            if pending:
                transport.write(pending)


def _chain(sslobj: ssl.SSLObject, which: str) -> tuple[bytes, ...]:
    """The peer's chain as DER: `get_unverified_chain` (as presented) or `get_verified_chain`
    (as verification built it). Public from Python 3.13, private from 3.10."""
    getter: Any = getattr(sslobj, which, None)
    if getter is None:
        getter = getattr(sslobj._sslobj, which, None)  # type: ignore[attr-defined]
    if getter is None:
        return ()
    return tuple(c if isinstance(c, bytes) else bytes(c.public_bytes(_DER)) for c in getter() or ())


def _cipher_name(sslobj: ssl.SSLObject) -> str | None:
    cipher = sslobj.cipher()
    return cipher[0] if cipher else None


def keep_peer_chain(context: ssl.SSLContext) -> None:
    """Make `context`'s sessions keep the peer's certificate facts when verification fails."""
    context.sslobject_class = _ChainKeepingSSLObject


class CertificateFacts(NamedTuple):
    not_before: float
    not_after: float
    subject: str
    issuer: str
    sans: tuple[str, ...]
    fingerprint_sha256: str
    dns_names: tuple[str, ...]
    subject_dn: str  # as Go writes it, for blackbox_exporter's labels
    issuer_dn: str


class CertificateReader:
    """Parses leaf certificates, remembering the last few: most probes see the same one."""

    def __init__(self, capacity: int = 1024) -> None:
        self._cache: OrderedDict[bytes, CertificateFacts | None] = OrderedDict()
        self._capacity = capacity

    def facts(self, der: bytes) -> CertificateFacts | None:
        digest = hashlib.sha256(der).digest()
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        facts = _parse(der, digest.hex())
        self._cache[digest] = facts
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return facts

    def tls_info(
        self,
        *,
        chain: tuple[bytes, ...],
        version: str | None,
        cipher: str | None,
        verified: bool,
        verify_error: str | None,
        verified_chain: tuple[bytes, ...] = (),
    ) -> TLSInfo:
        """`chain` as presented (leaf first); `verified_chain` as verification built it, when it
        succeeded."""
        facts = self.facts(chain[0]) if chain else None
        return TLSInfo(
            version=version or "unknown",
            cipher=cipher or "unknown",
            verified=verified,
            verify_error=verify_error,
            cert_not_before_timestamp=facts.not_before if facts else None,
            cert_not_after_timestamp=facts.not_after if facts else None,
            subject=facts.subject if facts else None,
            issuer=facts.issuer if facts else None,
            sans=facts.sans if facts else (),
            fingerprint_sha256=facts.fingerprint_sha256 if facts else None,
            dns_names=facts.dns_names if facts else (),
            subject_dn=facts.subject_dn if facts else None,
            issuer_dn=facts.issuer_dn if facts else None,
            chain_not_after_timestamp=self._earliest_not_after(chain),
            last_chain_not_after_timestamp=self._earliest_not_after(verified_chain or chain),
            chain=chain,
        )

    def _earliest_not_after(self, chain: tuple[bytes, ...]) -> float | None:
        """blackbox_exporter's expiry of a chain: the earliest of its certificates' (a certificate
        that cannot be read is left out, as Go leaves out a zero NotAfter)."""
        dates = [facts.not_after for facts in map(self.facts, chain) if facts is not None]
        return min(dates) if dates else None


def session_info(reader: CertificateReader, sslobj: ssl.SSLObject, *, verified: bool) -> TLSInfo:
    chain = _chain(sslobj, "get_unverified_chain")
    if not chain:  # an interpreter without the chain getters: the leaf at least
        leaf = sslobj.getpeercert(binary_form=True)
        chain = (leaf,) if leaf else ()
    return reader.tls_info(
        chain=chain,
        version=sslobj.version(),
        cipher=_cipher_name(sslobj),
        verified=verified,
        verify_error=None,
        verified_chain=_chain(sslobj, "get_verified_chain") if verified else (),
    )


def _parse(der: bytes, fingerprint: str) -> CertificateFacts | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns_names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
            names = dns_names + [str(n) for n in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            dns_names = names = []
        return CertificateFacts(
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            subject=cert.subject.rfc4514_string()[:MAX_NAME_CHARS],
            issuer=cert.issuer.rfc4514_string()[:MAX_NAME_CHARS],
            sans=tuple(n[:MAX_NAME_CHARS] for n in names[:MAX_SANS]),
            fingerprint_sha256=fingerprint,
            dns_names=tuple(n[:MAX_NAME_CHARS] for n in dns_names[:MAX_SANS]),
            subject_dn=go_name_string(cert.subject)[:MAX_NAME_CHARS],
            issuer_dn=go_name_string(cert.issuer)[:MAX_NAME_CHARS],
        )
    except (ValueError, TypeError):
        return None  # a certificate cryptography cannot read: the session facts still stand
