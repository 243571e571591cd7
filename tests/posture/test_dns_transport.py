"""The posture stub's transport against a scripted nameserver on loopback (UDP and TCP on one
port): a truncated answer is asked again over TCP, a datagram with another ID is not taken for
the answer, an answer that cannot be read is refused, and one unreadable TLSA record is left out
and counted while the records beside it are kept."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from smtp_exporter.posture.dns_transport import MalformedAnswer, exchange

GOOD = "3 1 1 " + "ab" * 32
Answerer = Callable[[dns.message.Message, str], list[bytes]]  # (query, "udp"|"tcp") -> datagrams / replies


def _reply(query: dns.message.Message, *texts: str, truncated: bool = False) -> dns.message.Message:
    response = dns.message.make_response(query)
    if texts:
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "TLSA", *texts))
    if truncated:
        response.flags |= dns.flags.TC
    return response


def _with_short_digest(wire: bytes, digest: bytes) -> bytes:
    """`wire` with the TLSA record whose data ends in `digest` cut one byte short (RDLENGTH too)."""
    at = wire.index(digest)
    rdlength_at = at - 3 - 2  # usage, selector and matching type come before the digest
    length = int.from_bytes(wire[rdlength_at : at - 3], "big")
    return (
        wire[:rdlength_at]
        + (length - 1).to_bytes(2, "big")
        + wire[at - 3 : at + len(digest) - 1]
        + wire[at + len(digest) :]
    )


def _same_port() -> tuple[socket.socket, socket.socket]:
    """A TCP listening socket and a UDP socket bound to one free loopback port."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(tcp.getsockname())
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.listen()
        return tcp, udp
    raise RuntimeError("no loopback port free for both TCP and UDP")


class Nameserver:
    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.asked: list[str] = []
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tcp_socket, udp = _same_port()
        self.port = udp.getsockname()[1]
        server = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                server.asked.append("udp")
                for datagram in server.answer(dns.message.from_wire(data), "udp"):
                    self.transport.sendto(datagram, addr)

        self.udp, _ = await loop.create_datagram_endpoint(Udp, sock=udp)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            size = int.from_bytes(await reader.readexactly(2), "big")
            self.asked.append("tcp")
            for reply in self.answer(dns.message.from_wire(await reader.readexactly(size)), "tcp"):
                writer.write(reply)
            await writer.drain()
            writer.close()

        self.tcp = await asyncio.start_server(tcp, sock=tcp_socket)

    def stop(self) -> None:
        self.udp.close()
        self.tcp.close()


@pytest.fixture
async def nameserver() -> AsyncIterator[Callable[[Answerer], Nameserver]]:
    started: list[Nameserver] = []

    def make(answer: Answerer) -> Nameserver:
        server = Nameserver(answer)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _query() -> dns.message.Message:
    return dns.message.make_query("_25._tcp.mx.example.test.", dns.rdatatype.TLSA, want_dnssec=True)


def _framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


async def test_a_truncated_answer_is_asked_again_over_tcp(
    nameserver: Callable[[Answerer], Nameserver],
) -> None:
    def answer(query: dns.message.Message, via: str) -> list[bytes]:
        if via == "udp":
            return [_reply(query, truncated=True).to_wire()]
        return [_framed(_reply(query, GOOD).to_wire())]

    server = nameserver(answer)
    await server.start()
    got = await exchange(_query(), "127.0.0.1", server.port, 2.0)
    assert server.asked == ["udp", "tcp"]
    assert [r.to_text() for r in got.message.answer[0]] == [GOOD]
    assert got.unreadable == ()


async def test_a_datagram_with_another_id_is_not_the_answer(
    nameserver: Callable[[Answerer], Nameserver],
) -> None:
    def answer(query: dns.message.Message, via: str) -> list[bytes]:
        stray = _reply(query, "3 1 1 " + "cd" * 32)
        stray.id = (query.id + 1) % 65536
        return [stray.to_wire(), _reply(query, GOOD).to_wire()]

    server = nameserver(answer)
    await server.start()
    got = await exchange(_query(), "127.0.0.1", server.port, 2.0)
    assert [r.to_text() for r in got.message.answer[0]] == [GOOD]


async def test_an_answer_that_cannot_be_read_is_refused(nameserver: Callable[[Answerer], Nameserver]) -> None:
    server = nameserver(
        lambda query, via: [_reply(query).to_wire()[:2] + b"\x81"]
    )  # the right ID, then 1 byte
    await server.start()
    with pytest.raises(MalformedAnswer, match="unreadable answer"):
        await exchange(_query(), "127.0.0.1", server.port, 2.0)


async def test_an_unreadable_tlsa_record_is_left_out_and_counted(
    nameserver: Callable[[Answerer], Nameserver],
) -> None:
    other = "3 1 1 " + "cd" * 32
    cut = bytes.fromhex("cd" * 32)
    server = nameserver(lambda query, via: [_with_short_digest(_reply(query, GOOD, other).to_wire(), cut)])
    await server.start()
    got = await exchange(_query(), "127.0.0.1", server.port, 2.0)
    assert [r.to_text() for r in got.message.answer[0]] == [GOOD]
    assert got.unreadable == ("certificate association data length inconsistent with matching type",)


async def test_no_answer_is_a_timeout(nameserver: Callable[[Answerer], Nameserver]) -> None:
    server = nameserver(lambda query, via: [])
    await server.start()
    with pytest.raises(TimeoutError):
        await exchange(_query(), "127.0.0.1", server.port, 0.3)
