"""The delivery check: after the SMTP part accepted the probe message, find it over IMAP.

Phases, in order: imap_connect (TCP, and the greeting when TLS is not implicit), imap_tls (the
handshake; with STARTTLS the command too, and the greeting with implicit TLS), imap_login
(LOGIN, and CAPABILITY when the login's reply lists none), imap_select, delivery (from the 250
after the message to the moment it is in the mailbox: IDLE when offered, else NOOP and UID
SEARCH every poll_interval), imap_fetch (its header block) and imap_logout (with `delete`, the
cleanup first: the message and this module's leftovers older than delivery.timeout, then
LOGOUT). Each failure ends the check as a `Failure` of its phase; running out of time in the
delivery phase is not_delivered. The delivery phase starts before the IMAP connection (at the
250), so it overlaps imap_connect .. imap_select.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from typing import NamedTuple

from smtp_exporter.config.schema import DeliveryConfig, IPProtocol
from smtp_exporter.delivery.client import ConnectionClosed, IMAPConnection
from smtp_exporter.delivery.headers import HeaderFacts, read_headers, read_token
from smtp_exporter.delivery.imap import IMAPProtocolError, Response, quoted
from smtp_exporter.model import (
    DeliveryInfo,
    Failure,
    FailureReason,
    Phase,
    PhaseResult,
    TranscriptEvent,
    round_to_ns,
)
from smtp_exporter.probe.attempts import CONNECT_ERRORS
from smtp_exporter.probe.connection import perf_counter
from smtp_exporter.probe.errors import LOCAL_ERROR, ProbeError
from smtp_exporter.probe.module import CompiledModule
from smtp_exporter.protocol.auth import REDACTED
from smtp_exporter.protocol.message import TOKEN_HEADER, Token

log = logging.getLogger("smtp_exporter.delivery")

IDLE_AT_MOST = 60.0  # re-IDLE (and SEARCH) at least this often, should a notification be missed
MAX_LEFTOVERS = 100  # leftovers looked at per probe: a full mailbox is cleaned over several probes


class DeliveryOutcome(NamedTuple):
    phases: tuple[PhaseResult, ...]
    events: list[TranscriptEvent]
    failure: Failure | None
    info: DeliveryInfo


class _Failed(Exception):
    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DeliveryCheck:
    """One probe's delivery check; `run()` once. `deadline`: delivery.timeout, or less when the
    probe's own deadline (/probe's scrape timeout) is nearer."""

    def __init__(
        self,
        module: CompiledModule,
        host: str,
        *,
        token: Token,
        message_id: str,
        accepted_at: float,
        deadline: float,
    ) -> None:
        delivery = module.config.delivery
        assert delivery is not None and module.imap_tls_context is not None
        self.module = module
        self.config: DeliveryConfig = delivery
        self.host = delivery.imap.host or host
        self.token = token
        self.message_id = message_id
        self.accepted_at = accepted_at
        self.deadline = deadline
        self.events: list[TranscriptEvent] = []
        self.phases: list[PhaseResult] = []
        self.phase = Phase.IMAP_CONNECT
        self._started = 0.0
        self.conn: IMAPConnection | None = None
        self.capabilities: frozenset[str] = frozenset()
        self._preauth = False
        self.found_at: float | None = None
        self.facts: HeaderFacts | None = None
        self.cleaned_up = 0

    async def run(self) -> DeliveryOutcome:
        failure = None
        try:
            async with asyncio.timeout(self.deadline):
                await self._steps()
        except TimeoutError:
            failure = self._timed_out()
        except _Failed as exc:
            failure = Failure(self.phase, exc.reason, exc.message)
        except ConnectionClosed as exc:
            failure = Failure(self.phase, FailureReason.CONNECTION_CLOSED, str(exc))
        except IMAPProtocolError as exc:
            failure = Failure(self.phase, FailureReason.PROTOCOL_ERROR, str(exc))
        except OSError as exc:
            failure = Failure(self.phase, FailureReason.CONNECTION_CLOSED, f"IMAP connection: {exc}")
        except Exception as exc:  # a bug or an exporter-side failure: a result all the same
            log.exception("delivery check of %s failed on the exporter's side", self.host)
            failure = Failure(self.phase, FailureReason.LOCAL_ERROR, f"{LOCAL_ERROR}: {type(exc).__name__}")
        finally:
            if self.conn is not None:
                self.conn.close()
        if failure is not None:
            self._note(
                f"delivery check failed in {failure.phase.value}: {failure.reason.value}: {failure.message}"
            )
        facts = self.facts
        duration = None if self.found_at is None else round_to_ns(self.found_at - self.accepted_at)
        info = DeliveryInfo(
            message_id=self.message_id,
            token=str(self.token),
            duration_seconds=duration,
            hops=facts.hops if facts else None,
            received_span_seconds=facts.received_span_seconds if facts else None,
            authentication_results=facts.authentication_results if facts else (),
            cleaned_up=self.cleaned_up,
        )
        return DeliveryOutcome(tuple(self.phases), self.events, failure, info)

    def _timed_out(self) -> Failure:
        cut = "" if self.deadline >= self.config.timeout else " (what the probe's deadline left of it)"
        if self.phase is Phase.DELIVERY:
            return Failure(
                Phase.DELIVERY,
                FailureReason.NOT_DELIVERED,
                f"the message {self.message_id} did not appear in {self.config.imap.mailbox} "
                f"within the {self.deadline:g}s delivery timeout{cut}",
            )
        return Failure(
            self.phase,
            FailureReason.TIMEOUT,
            f"the IMAP part did not finish within the {self.deadline:g}s delivery timeout{cut}",
        )

    def _note(self, text: str) -> None:
        self.events.append((perf_counter(), "*", text))

    def _begin(self, phase: Phase) -> None:
        self.phase = phase
        self._started = perf_counter()

    def _end(self, reply: Response | None, *, ended: float | None = None, text: str | None = None) -> None:
        at = perf_counter() if ended is None else ended
        shown = text if text is not None else (None if reply is None else reply.summary()[:200])
        self.phases.append(PhaseResult(self.phase, round_to_ns(at - self._started), None, shown))

    async def _ok(
        self, line: bytes, shown: str | None = None, *, no: FailureReason = FailureReason.IMAP_ERROR
    ) -> tuple[Response, list[Response]]:
        """A command whose tagged reply must be OK: NO fails the phase with `no`, BAD (or
        anything else) with imap_error."""
        assert self.conn is not None
        reply, untagged = await self.conn.command(line, shown)
        if reply.status != "OK":
            what = (shown or line.decode("utf-8", "replace")).split(" ", 1)[0]
            reason = no if reply.status == "NO" else FailureReason.IMAP_ERROR
            raise _Failed(reason, f"{what}: {reply.status} {reply.detail[:200]}".rstrip())
        return reply, untagged

    async def _steps(self) -> None:
        await self._connect()
        await self._login()
        self._begin(Phase.IMAP_SELECT)
        reply, _ = await self._ok(b"SELECT " + quoted(self.config.imap.mailbox))
        self._end(reply)
        uid = await self._wait()
        self._begin(Phase.IMAP_FETCH)
        reply, untagged = await self._ok(b"UID FETCH %d (BODY.PEEK[HEADER])" % uid)
        block = next((r.literals[0] for r in untagged if r.fetch_uid() == uid and r.literals), None)
        if block is None:
            raise IMAPProtocolError(f"no header block in the FETCH answer for UID {uid}")
        self.facts = read_headers(block, self.config.authserv_id)
        self._end(reply)
        self._begin(Phase.IMAP_LOGOUT)
        if self.config.delete:
            await self._clean_up(uid)
        assert self.conn is not None
        reply, _ = await self.conn.command(b"LOGOUT", bye=True)
        self._end(reply)

    async def _connect(self) -> None:
        self._begin(Phase.IMAP_CONNECT)
        imap = self.config.imap
        port = imap.effective_port
        address = await self._address()
        self._note(f"IMAP: connecting to {address} port {port}")
        try:
            reader, writer = await asyncio.open_connection(address, port)
        except OSError as exc:
            reason = CONNECT_ERRORS.get(exc.errno or 0, FailureReason.NETWORK_UNREACHABLE)
            raise _Failed(reason, f"IMAP {address} port {port}: {exc.strerror or exc}") from exc
        conn = self.conn = IMAPConnection(reader, writer, self.events)
        context = self.module.imap_tls_context
        assert context is not None
        server_name = imap.tls_config.server_name or self.host
        if imap.tls_on_connect:
            self._end(None)
            self._begin(Phase.IMAP_TLS)
            await self._handshake(conn, context, server_name)
            greeting = await conn.greeting()
            self._end(greeting)
        else:
            greeting = await conn.greeting()
            self._end(greeting)
            self._begin(Phase.IMAP_TLS)
            caps = greeting.capabilities()
            if caps is None:
                _, untagged = await self._ok(b"CAPABILITY")
                caps = next((c for r in untagged if (c := r.capabilities()) is not None), frozenset())
            if "STARTTLS" not in caps:
                raise _Failed(FailureReason.STARTTLS_NOT_OFFERED, "the IMAP server does not offer STARTTLS")
            reply, _ = await self._ok(b"STARTTLS")
            if conn.buffered():
                # Bytes after the OK, before TLS, would be read as if they came inside it.
                raise IMAPProtocolError("data after the STARTTLS reply, before TLS (response injection)")
            await self._handshake(conn, context, server_name)
            self._end(reply)
        if greeting.status == "BYE":
            raise _Failed(FailureReason.IMAP_ERROR, f"greeting: {greeting.text[:200]}")
        # Capabilities announced before TLS are not trusted (RFC 3501 6.2.1): asked again later.
        self.capabilities = (greeting.capabilities() or frozenset()) if imap.tls_on_connect else frozenset()
        self._preauth = greeting.status == "PREAUTH"

    async def _address(self) -> str:
        try:
            ipaddress.ip_address(self.host)
            return self.host
        except ValueError:
            pass
        protocol = self.module.config.ip_protocol
        if protocol is IPProtocol.BOTH:
            protocol = IPProtocol.AUTO
        try:
            addresses = await self.module.dns.addresses(self.host, protocol)
        except ProbeError as exc:
            raise _Failed(exc.reason, f"IMAP host {self.host}: {exc.message}") from exc
        return addresses[0].ip

    async def _handshake(self, conn: IMAPConnection, context: ssl.SSLContext, server_name: str) -> None:
        try:
            await conn.start_tls(context, server_name)
        except ssl.SSLCertVerificationError as exc:
            raise _Failed(FailureReason.TLS_CERT_INVALID, exc.verify_message or str(exc)) from exc
        except (ssl.SSLError, ConnectionError) as exc:
            raise _Failed(FailureReason.TLS_HANDSHAKE_FAILED, f"TLS handshake failed: {exc}") from exc
        sslobj = conn.writer.get_extra_info("ssl_object")
        if sslobj is not None:
            self._note(f"IMAP: TLS {sslobj.version()} {sslobj.cipher()[0]}")

    async def _login(self) -> None:
        self._begin(Phase.IMAP_LOGIN)
        imap = self.config.imap
        reply: Response | None = None
        if not self._preauth:
            user = quoted(imap.username)
            shown = f"LOGIN {user.decode('utf-8', 'replace')} {REDACTED}"
            password = quoted(imap.password.reveal())
            reply, untagged = await self._ok(
                b"LOGIN " + user + b" " + password, shown, no=FailureReason.AUTH_FAILED
            )
            self.capabilities = _capabilities(reply, untagged) or self.capabilities
        if not self.capabilities:
            reply, untagged = await self._ok(b"CAPABILITY")
            self.capabilities = _capabilities(reply, untagged) or frozenset()
        self._end(reply)

    async def _search(self, criteria: bytes) -> tuple[list[int], bool]:
        """The UIDs found, and whether the server announced a new message meanwhile."""
        _, untagged = await self._ok(b"UID SEARCH " + criteria)
        uids = [uid for response in untagged for uid in response.search_uids()]
        return uids, any(response.status == "EXISTS" for response in untagged)

    async def _wait(self) -> int:
        """The message's UID, once it is in the mailbox (the delivery phase, from the 250)."""
        self.phase = Phase.DELIVERY
        self._started = self.accepted_at
        conn = self.conn
        assert conn is not None
        by_token = b"HEADER " + TOKEN_HEADER.encode() + b" " + quoted(str(self.token))
        idle = "IDLE" in self.capabilities
        how = "IDLE" if idle else f"NOOP and SEARCH every {self.config.poll_interval:g}s"
        self._note(f"waiting for {self.message_id}: {how}")
        news: float | None = None
        while True:
            found, announced = await self._search(by_token)
            if found:
                uid = max(found)
                self.found_at = news if news is not None else conn.last_read
                self._end(None, ended=self.found_at, text=f"UID {uid}")
                return uid
            news = None
            if announced:
                continue  # it may have come while the SEARCH ran: look again at once
            if idle:
                news, reply = await conn.idle(IDLE_AT_MOST)
                if reply is not None and reply.status != "OK":
                    raise _Failed(FailureReason.IMAP_ERROR, f"IDLE: {reply.status} {reply.detail[:200]}")
            else:
                await asyncio.sleep(self.config.poll_interval)
                # A server may report (and search) new messages only at a command that syncs.
                await self._ok(b"NOOP")

    async def _clean_up(self, uid: int) -> None:
        """The found message, and this module's leftovers older than delivery.timeout (by the
        time in their token: younger ones may be another exporter's, still waited for). A
        message whose header is not this module's token is never touched."""
        mine = {uid}
        module = self.token.module
        candidates, _ = await self._search(b"HEADER " + TOKEN_HEADER.encode() + b" " + quoted(module))
        candidates = sorted(u for u in candidates if u != uid)[:MAX_LEFTOVERS]
        if candidates:
            oldest_kept = time.time() - self.config.timeout
            uids = b",".join(b"%d" % u for u in candidates)
            fields = b"(BODY.PEEK[HEADER.FIELDS (" + TOKEN_HEADER.encode() + b")])"
            _, untagged = await self._ok(b"UID FETCH " + uids + b" " + fields)
            for response in untagged:
                found = response.fetch_uid()
                if found is None or found not in candidates or not response.literals:
                    continue
                token = read_token(response.literals[0])
                if token is not None and token.module == module and token.timestamp < oldest_kept:
                    mine.add(found)
        uids = b",".join(b"%d" % u for u in sorted(mine))
        if "UIDPLUS" in self.capabilities:
            await self._ok(b"UID STORE " + uids + b" +FLAGS.SILENT (\\Deleted)")
            _, untagged = await self._ok(b"UID EXPUNGE " + uids)
        else:
            # EXPUNGE removes every \Deleted message: only when no other message is so flagged.
            flagged, _ = await self._search(b"DELETED")
            others = [u for u in flagged if u not in mine]
            if others:
                self._note(
                    f"not expunged: {len(others)} other messages are flagged \\Deleted "
                    "and the server has no UIDPLUS"
                )
                return
            await self._ok(b"UID STORE " + uids + b" +FLAGS.SILENT (\\Deleted)")
            _, untagged = await self._ok(b"EXPUNGE")
        self.cleaned_up = sum(1 for response in untagged if response.status == "EXPUNGE")


def _capabilities(reply: Response, untagged: list[Response]) -> frozenset[str] | None:
    found = reply.capabilities()
    for response in untagged:
        found = response.capabilities() or found
    return found
