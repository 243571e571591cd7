"""One DNS query to one nameserver: over UDP, and again over TCP when the answer is truncated
(RFC 7766 section 5), read leniently.

dnspython's query functions refuse a whole answer when one record's data cannot be read, and
dnspython refuses more than the protocol does: a TLSA record whose digest is not as long as its
matching type says (a SHA-256 of 31 bytes, a typo in the zone) is unreadable to it, so the
answer, with every good TLSA record beside that one, would be lost and DANE would look like a
failed lookup (an outage) where a sending MTA sees an unusable record and goes on with the
others (RFC 7672 section 2.2). Here the answer is read with `continue_on_error`: such a record
is left out, and the caller is told how many of the answer's records were and why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message


class MalformedAnswer(Exception):
    """An answer that is not a reply to the query, or cannot be read at all."""


@dataclass(frozen=True, slots=True)
class Answer:
    message: dns.message.Message
    unreadable: tuple[str, ...]  # why, for each answer-section record left out


async def exchange(query: dns.message.Message, host: str, port: int, timeout: float) -> Answer:
    """`query`'s answer from `host`:`port` within `timeout` seconds. Raises TimeoutError, OSError
    (refused, unreachable, reset) or MalformedAnswer."""
    wire = query.to_wire()
    async with asyncio.timeout(timeout):
        answer = await _udp(query, wire, host, port)
        if answer.message.flags & dns.flags.TC:
            answer = await _tcp(query, wire, host, port)
    return answer


def _read(query: dns.message.Message, wire: bytes) -> Answer:
    try:
        message = dns.message.from_wire(wire, continue_on_error=True)
    except dns.exception.DNSException as exc:  # e.g. shorter than a header
        raise MalformedAnswer(f"unreadable answer: {exc}") from exc
    if not query.is_response(message):
        raise MalformedAnswer("an answer that is not to the query asked")
    if message.errors:
        announced = int.from_bytes(wire[6:8], "big")  # ANCOUNT (RFC 1035 section 4.1.1)
        read = sum(len(rrset) for rrset in message.answer)
        if read >= announced:  # the trouble is elsewhere (header, question, other sections)
            raise MalformedAnswer(f"unreadable answer: {message.errors[0].exception}")
        reasons = tuple(str(error.exception) or type(error.exception).__name__ for error in message.errors)
        return Answer(message, reasons[: announced - read])
    return Answer(message, ())


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes | OSError] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable, and the like
        self.received.put_nowait(exc if isinstance(exc, OSError) else OSError(str(exc)))


async def _udp(query: dns.message.Message, wire: bytes, host: str, port: int) -> Answer:
    loop = asyncio.get_running_loop()
    # A connected socket: the kernel drops datagrams from any other address.
    transport, protocol = await loop.create_datagram_endpoint(_Datagrams, remote_addr=(host, port))
    try:
        transport.sendto(wire)
        while True:
            data = await protocol.received.get()
            if isinstance(data, OSError):
                raise data
            if data[:2] == wire[:2]:  # another ID: a stray or forged datagram (RFC 5452 section 9.1)
                return _read(query, data)
    finally:
        transport.close()


async def _tcp(query: dns.message.Message, wire: bytes, host: str, port: int) -> Answer:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(len(wire).to_bytes(2, "big") + wire)
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")  # at most 65,535 bytes
            return _read(query, await reader.readexactly(size))
        except asyncio.IncompleteReadError as exc:
            raise MalformedAnswer("the connection closed inside the answer") from exc
    finally:
        writer.close()
