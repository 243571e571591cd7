"""The connect attempts of one probe, as a sending MTA makes them (RFC 5321 5.1, Postfix).

The candidates come in order: MX hosts by preference (equal preferences in DNS order), each of
its addresses. Each connect is bounded by the module's `connect_timeout`, at most
`max_attempts` are made, and every one is recorded (`Attempt`) for the result. Moving on to the
next MX host after a connect failure, or after a greeting or EHLO the engine found wrong, is what
`mx_failover_on` allows; later phases never fail over (the engine never asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

from smtp_exporter.model import Attempt, AttemptOutcome, FailureReason, MXInfo, Phase, round_to_ns
from smtp_exporter.probe.connection import perf_counter
from smtp_exporter.probe.errors import LOCAL_ERRNOS, LOCAL_ERROR
from smtp_exporter.probe.resolve import Address

# How a failed connect reads to an operator; any other error means the address cannot be reached.
CONNECT_ERRORS = {
    errno.ECONNREFUSED: FailureReason.CONNECT_REFUSED,  # nothing listens, or a firewall rejects
    errno.ECONNRESET: FailureReason.CONNECTION_CLOSED,  # it accepted, then dropped us at once
    errno.ECONNABORTED: FailureReason.CONNECTION_CLOSED,
    errno.EPIPE: FailureReason.CONNECTION_CLOSED,
    errno.ETIMEDOUT: FailureReason.TIMEOUT,
    # The exporter's own side: no other address would do better.
    **dict.fromkeys(LOCAL_ERRNOS, FailureReason.LOCAL_ERROR),
}


# What an attempt connected: the probe's transport, made by the loop, or a socket to make it on.
Connected = socket.socket | asyncio.BaseTransport


class Candidate(NamedTuple):
    address: Address
    mx: MXInfo | None


class _Record:
    """An attempt while it runs and after: what `Attempt` reports, and the failure's message."""

    __slots__ = ("candidate", "ended", "message", "outcome", "phase", "reason", "started")

    def __init__(self, candidate: Candidate, started: float) -> None:
        self.candidate = candidate
        self.started = started
        self.ended: float | None = None
        self.outcome = AttemptOutcome.CONNECTED
        self.phase: Phase | None = None
        self.reason: FailureReason | None = None
        self.message = ""

    def failed(self, at: float, phase: Phase, reason: FailureReason, message: str) -> None:
        self.ended = at
        self.outcome = AttemptOutcome.FAILED
        self.phase, self.reason, self.message = phase, reason, message

    def cancelled(self, at: float) -> None:
        self.ended = at
        self.outcome = AttemptOutcome.CANCELLED

    def attempt(self, at: float, *, report_mx: bool) -> Attempt:
        address, mx = self.candidate
        ended = self.ended if self.ended is not None else at
        return Attempt(
            mx.host if mx is not None and report_mx else None,
            address.ip,
            address.family,
            self.outcome,
            self.phase,
            self.reason,
            round_to_ns(ended - self.started),
        )


class Attempts:
    """Hands out connected sockets, one candidate after another (`connect`), and keeps the
        record of every attempt. Nothing of the probe's is kept (its clock and transcript are passed
    to `connect`), so a probe's objects form no reference cycle and go with reference counting."""

    def __init__(
        self,
        candidates: list[Candidate],
        port: int,
        *,
        connect_timeout: float,
        max_attempts: int,
        failover_on_connect: bool,
        source: str | None = None,
        stagger: float | None = None,
        preferred_family: int = 6,
    ) -> None:
        # Racing, each MX host's addresses alternate between the families, the preferred first
        # (RFC 8305 4): a host with several IPv6 addresses still gets its IPv4 one tried early.
        racing = stagger is not None and len(candidates) > 1
        self._queue = deque(_interleaved(candidates, preferred_family) if racing else candidates)
        self._stagger = stagger
        self._port = port
        self._connect_timeout = connect_timeout
        self._left = max_attempts
        self._failover_on_connect = failover_on_connect
        self._source = source
        self.records: list[_Record] = []

    def describe(self, candidate: Candidate) -> str:
        via = f" (MX {candidate.mx.host})" if candidate.mx is not None else ""
        return f"{candidate.address.ip} port {self._port}{via}"

    def next_host(self, mx: MXInfo | None) -> bool:
        """Drop the rest of `mx`'s addresses: whether another MX host is left to try."""
        while self._queue and self._queue[0].mx == mx:
            self._queue.popleft()
        return bool(self._queue) and self._left > 0

    async def connect(
        self,
        deadline_left: Callable[[], float],
        note: Callable[[float, str], None],
        protocol: asyncio.Protocol,
    ) -> tuple[Connected, _Record] | None:
        """The next candidate that accepts a connection, or None when none is left to try (the
        candidates, the attempts or the deadline used up, a connect failure that may not move on
        to the next MX host, or a failure on the exporter's side). What connected is the
        transport of `protocol` when the loop made the connection, or a socket to make it on.

        With a `stagger` delay (Happy Eyeballs, RFC 8305), the addresses of one MX host race: the
        next one starts when the one before failed, or after the delay when it is of a family
        not yet trying; the first connection wins and the others are cancelled. Without it, one
        connect at a time."""
        running: dict[asyncio.Task[Connected], _Record] = {}
        winner: tuple[Connected, _Record] | None = None
        finished = False  # False while unwinding from the deadline: abandon() records those
        try:
            while True:
                if not running:
                    begun = self._begin(deadline_left, note)
                    if begun is None:
                        finished = True
                        return None
                    candidate, record, bound = begun
                    if not self._can_race([record]):
                        # Nothing can race this attempt (one address, or no stagger): awaited
                        # here, not as a task under asyncio.wait, which would cost each probe a
                        # task and its wake-ups, each a turn of the loop inside the connect phase.
                        try:
                            made = await self._attempt(candidate, bound, protocol)
                        except _Failure as failure:
                            if self._failed_for_all(record, failure, note):
                                finished = True
                                return None
                            continue
                        record.ended = perf_counter()
                        finished = True
                        return made, record
                    running[asyncio.ensure_future(self._attempt(candidate, bound))] = record
                delay = self._stagger if self._can_race(running.values()) else None
                done, _ = await asyncio.wait(running, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the delay passed: the other family starts
                    self._start(running, deadline_left, note)
                    continue
                for task in done:
                    record = running.pop(task)
                    try:
                        sock = task.result()
                    except _Failure as failure:
                        if self._failed_for_all(record, failure, note):
                            finished = True
                            return None
                        continue
                    if winner is None:
                        record.ended = perf_counter()
                        winner = (sock, record)
                    else:  # two connected in the same instant: the first taken wins
                        sock.close()
                        record.cancelled(perf_counter())
                if winner is not None:
                    finished = True
                    return winner
                if running and self._can_race(running.values()):  # a failure starts the next at once
                    self._start(running, deadline_left, note)
        finally:
            for task, record in running.items():
                task.cancel()
                if finished:
                    record.cancelled(perf_counter())
                    note(perf_counter(), f"{self.describe(record.candidate)}: cancelled")
            for task in running:
                with contextlib.suppress(BaseException):
                    await task

    def _may_continue(self) -> bool:
        """After the last running attempt failed: whether the next candidate may be tried."""
        if not self._queue or self._left <= 0:
            return False
        last = self.records[-1].candidate
        return self._queue[0].mx == last.mx or self._failover_on_connect

    def _can_race(self, connecting: Iterable[_Record]) -> bool:
        """Whether the next candidate may start while `connecting` still connect: racing is on,
        and it is of the same MX host and of a family not trying yet."""
        trying = [record.candidate for record in connecting]
        if self._stagger is None or not trying or not self._queue or self._left <= 0:
            return False
        following = self._queue[0]
        return following.mx == trying[0].mx and all(
            c.address.family != following.address.family for c in trying
        )

    def _begin(
        self, deadline_left: Callable[[], float], note: Callable[[float, str], None]
    ) -> tuple[Candidate, _Record, float] | None:
        """The next candidate, its record and its connect bound, when none is connecting and
        one may start."""
        if not self._queue or self._left <= 0 or deadline_left() <= 0:
            return None
        if self.records and not self._may_continue():
            return None
        candidate = self._queue.popleft()
        self._left -= 1
        record = _Record(candidate, perf_counter())
        self.records.append(record)
        note(record.started, f"connecting to {self.describe(candidate)}")
        return candidate, record, min(self._connect_timeout, deadline_left())

    def _start(
        self,
        running: dict[asyncio.Task[Connected], _Record],
        deadline_left: Callable[[], float],
        note: Callable[[float, str], None],
    ) -> None:
        """Start the next candidate's attempt beside those `running`, if it may race them."""
        if not self._can_race(running.values()) or deadline_left() <= 0:
            return
        candidate = self._queue.popleft()
        self._left -= 1
        record = _Record(candidate, perf_counter())
        self.records.append(record)
        note(record.started, f"connecting to {self.describe(candidate)}")
        bound = min(self._connect_timeout, deadline_left())
        running[asyncio.ensure_future(self._attempt(candidate, bound))] = record

    async def _attempt(
        self, candidate: Candidate, bound: float, protocol: asyncio.Protocol | None = None
    ) -> Connected:
        """One connect, or a `_Failure` saying why not. Given `protocol` (an attempt nothing
        races) and no source address, the loop connects it: with uvloop, libuv's own connect,
        without the watcher and the wrapping of a socket made here (docs/architecture.md)."""
        try:
            async with asyncio.timeout(bound):
                if protocol is not None and self._source is None:
                    loop = asyncio.get_running_loop()
                    transport, _ = await loop.create_connection(
                        lambda: protocol, candidate.address.ip, self._port
                    )
                    return transport
                return await _open(candidate.address, self._port, self._source)
        except TimeoutError:
            message = f"{self.describe(candidate)}: no connection within {bound:.3g}s (connect_timeout)"
            raise _Failure(FailureReason.TIMEOUT, message) from None
        except _BindError as exc:
            detail = os.strerror(exc.errno) if exc.errno else str(exc)
            message = f"{LOCAL_ERROR}: cannot bind the source address {self._source}: {detail}"
            raise _Failure(FailureReason.LOCAL_ERROR, message) from None
        except OSError as exc:
            reason = CONNECT_ERRORS.get(exc.errno or 0, FailureReason.NETWORK_UNREACHABLE)
            detail = os.strerror(exc.errno) if exc.errno else str(exc)
            if reason is FailureReason.LOCAL_ERROR:
                message = f"{LOCAL_ERROR}: {detail} (connecting to {self.describe(candidate)})"
            else:
                message = f"{self.describe(candidate)}: {detail}"
            raise _Failure(reason, message) from None

    @staticmethod
    def _failed_for_all(record: _Record, failure: _Failure, note: Callable[[float, str], None]) -> bool:
        """Record `failure` of `record`'s attempt; whether it ends the search: a failure on the
        exporter's side, which every other candidate would meet the same way."""
        now = perf_counter()
        record.failed(now, Phase.CONNECT, failure.reason, failure.message)
        note(now, failure.message)
        return failure.reason is FailureReason.LOCAL_ERROR

    def abandon(self, at: float) -> None:
        """The deadline passed: an attempt still connecting failed with it."""
        for record in self.records:
            if record.ended is None:
                record.failed(at, Phase.CONNECT, FailureReason.TIMEOUT, "the probe's deadline passed")

    def last_failure(self) -> _Record | None:
        """The failed attempt that ended last: when every attempt failed, the probe's failure."""
        failed = [r for r in self.records if r.outcome is AttemptOutcome.FAILED]
        return max(failed, key=lambda r: r.ended or 0.0) if failed else None

    def report(self, at: float, *, report_mx: bool) -> tuple[Attempt, ...]:
        return tuple(record.attempt(at, report_mx=report_mx) for record in self.records)


def _interleaved(candidates: list[Candidate], preferred: int) -> list[Candidate]:
    result: list[Candidate] = []
    hosts: dict[MXInfo | None, list[Candidate]] = {}
    for candidate in candidates:
        hosts.setdefault(candidate.mx, []).append(candidate)
    for group in hosts.values():
        first = [c for c in group if c.address.family == preferred]
        second = [c for c in group if c.address.family != preferred]
        for index in range(max(len(first), len(second))):
            result += first[index : index + 1] + second[index : index + 1]
    return result


class _Failure(Exception):
    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _BindError(OSError):
    """The source address could not be bound: the exporter's side (addresses come and go)."""


async def _open(address: Address, port: int, source: str | None) -> socket.socket:
    """A connected non-blocking socket to `address` (from `source`, bound before connecting),
    made by hand rather than by loop.create_connection for an attempt that races others (the
    winner gets the probe's protocol, the others none) or is bound to a source address (a
    failed bind told apart from a failed connect)."""
    family = socket.AF_INET6 if address.family == 6 else socket.AF_INET
    # Non-blocking from its creation (no ioctl of its own). Its proto is IPPROTO_TCP so that
    # asyncio's transport turns Nagle off, as uvloop's always does: with Nagle on, the EHLO after
    # a TLS 1.3 handshake waited in our kernel until the server acknowledged our Finished, and
    # ehlo_tls against Postfix read ~72 ms over a 10 ms round trip (docs/architecture.md,
    # "Timing the server").
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
    try:
        if source is not None:
            try:
                sock.bind((source, 0))
            except OSError as exc:
                raise _BindError(exc.errno, exc.strerror) from exc
        await _connect(sock, (address.ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """A non-blocking connect to an address already resolved, finished when the socket is
    writable. Not loop.sock_connect: uvloop's passes every address, numeric or not, through
    getaddrinfo in its thread pool, two thread wake-ups per probe, which at 1,000 probes/s cost
    more CPU than the conversation itself and sat inside the connect phase (docs/architecture.md)."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()
    loop.add_writer(sock, _check_connected, sock, connected)
    try:
        await connected
    finally:
        loop.remove_writer(sock)


def _check_connected(sock: socket.socket, connected: asyncio.Future[None]) -> None:
    if connected.done():
        return
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        connected.set_exception(OSError(error, f"Connect call failed: {os.strerror(error)}"))
    else:
        connected.set_result(None)
