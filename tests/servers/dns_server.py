"""A real authoritative DNS server on 127.0.0.1, UDP and TCP on the same port, built on dnspython.

    records = {
        "example.test": {"MX": ["10 mx1.example.test.", "20 mx2.example.test."]},
        "mx1.example.test": {"A": "127.0.0.1", "AAAA": "::1"},
        "nullmx.test": {"MX": "0 ."},                          # RFC 7505 null MX
        "www.example.test": {"CNAME": "mx1.example.test."},
    }
    with DnsServer(records, servfail=["broken.test"], delays={"slow.test": 3.0}) as dns_server:
        resolver = dns_server.resolver()       # or, by hand:
        # resolver = dns.asyncresolver.Resolver(configure=False)
        # resolver.nameservers = ["127.0.0.1"]; resolver.port = dns_server.port
        answer = await resolver.resolve("example.test", "MX")

The probe module's `dns.nameservers` takes `dns_server.nameserver` ("127.0.0.1:PORT").

Answers are authoritative (AA). For a name inside one of `zones` (default "test."): its
records; a CNAME is followed inside the zone data; a name with no record of the asked type
gets NOERROR with no answer (and the zone's SOA); an unknown name gets NXDOMAIN. Names in
`servfail` get SERVFAIL (an entry "name TYPE", e.g. "dual.test AAAA", only for that type), names in `drop` get no answer at all (a resolver times out), names
in `delays` are answered after that many seconds. Names outside the zones are REFUSED.
Every query is recorded in `queries`. `truncate_udp=True` answers every UDP query with
TC set and no records, so resolvers must retry over TCP.

It runs in a thread of its own, so it answers while the test blocks, and also to other
processes (e.g. an exporter under test).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.servers.lifecycle import LoopThread, StartStop, cancel_other_tasks

BIND_ATTEMPTS = 20
Records = Mapping[str, Mapping[str, str | Sequence[str]]]


@dataclass(frozen=True, slots=True)
class Query:
    name: str  # lower case, with the trailing dot
    rdtype: str  # "A", "MX", ...
    transport: str  # "udp" or "tcp"


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name.lower(), origin=dns.name.root)


class DnsServer(StartStop):
    """See the module docstring. `port` is the same for UDP and TCP."""

    def __init__(
        self,
        records: Records,
        *,
        zones: Iterable[str] = ("test.",),
        servfail: Iterable[str] = (),
        drop: Iterable[str] = (),
        delays: Mapping[str, float] | None = None,
        truncate_udp: bool = False,
        ttl: int = 60,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.zones = tuple(_absolute(z) for z in zones)
        self._servfail = {_absolute(n) for n in servfail if " " not in n}
        self._servfail_types = {
            (_absolute(n), dns.rdatatype.from_text(t)) for n, t in (e.split() for e in servfail if " " in e)
        }
        self._drop = {_absolute(n) for n in drop}
        self._delays = {_absolute(n): d for n, d in (delays or {}).items()}
        self._truncate_udp = truncate_udp
        self._data: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        for name, by_type in records.items():
            owner = _absolute(name)
            node = self._data.setdefault(owner, {})
            for type_text, values in by_type.items():
                rdtype = dns.rdatatype.from_text(type_text)
                texts = [values] if isinstance(values, str) else list(values)
                node[rdtype] = dns.rrset.from_text_list(
                    owner, ttl, dns.rdataclass.IN, rdtype, texts, origin=dns.name.root, relativize=False
                )
        self._soa = {
            zone: dns.rrset.from_text(
                zone, ttl, "IN", "SOA", f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {ttl}"
            )
            for zone in self.zones
        }
        self._lock = threading.Lock()
        self._queries: list[Query] = []
        self.errors: list[Exception] = []  # exceptions while answering (a bug in this server)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner = LoopThread("dns", self._listen, self._close)
        self.port = 0

    # -- what clients use -------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """The "ip:port" form the probe module's `dns.nameservers` takes."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def resolver(self, *, lifetime: float = 2.0) -> dns.asyncresolver.Resolver:
        """A dnspython asyncio resolver that asks only this server."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = lifetime
        resolver.lifetime = lifetime
        return resolver

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    # -- answering --------------------------------------------------------------------

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The response to `query` (pure: no delay, no recording)."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        zone = next((z for z in self.zones if name.is_subdomain(z)), None)
        if name in self._servfail or (name, rdtype) in self._servfail_types:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
            return response
        for _ in range(8):  # follow CNAMEs inside our data, as an authoritative server does
            node = self._data.get(name)
            if node is None:
                if not response.answer:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            if rdtype in node:
                response.answer.append(node[rdtype])
                break
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                break
            response.answer.append(cname)
            name = cname[0].target
        if not response.answer:
            response.authority.append(self._soa[zone])
        return response

    async def _respond(self, wire: bytes, transport: str) -> bytes | None:
        try:
            return await self._respond_or_raise(wire, transport)
        except Exception as exc:  # a bug here must not look like a slow server: SERVFAIL, and kept
            with self._lock:
                self.errors.append(exc)
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    async def _respond_or_raise(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if query.question:
            question = query.question[0]
            with self._lock:
                self._queries.append(
                    Query(question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype), transport)
                )
            if question.name in self._drop:
                return None
            delay = self._delays.get(question.name)
            if delay:
                await asyncio.sleep(delay)
        response = self.answer(query)
        if transport == "udp":
            if self._truncate_udp:
                response = dns.message.make_response(query)
                response.flags |= dns.flags.TC | dns.flags.AA
                return response.to_wire()
            limit = max(512, query.payload if query.edns >= 0 else 512)
            try:
                return response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                response.answer.clear()
                response.authority.clear()
                response.flags |= dns.flags.TC
                return response.to_wire()
        return response.to_wire()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> DnsServer:
        self._runner.start()
        return self

    def stop(self) -> None:
        """Stop answering and end the thread. Idempotent."""
        self._runner.stop()

    async def _listen(self) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        loop = asyncio.get_running_loop()
        tasks = self._tasks

        def spawn(coro: Coroutine[Any, Any, None]) -> None:
            task = loop.create_task(coro)
            tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(tasks.discard)

        server = self

        class Udp(asyncio.DatagramProtocol):
            transport: asyncio.DatagramTransport

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                async def reply() -> None:
                    wire = await server._respond(data, "udp")
                    if wire is not None and not self.transport.is_closing():
                        self.transport.sendto(wire, addr)

                spawn(reply())

        async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await server._respond(await reader.readexactly(length), "tcp")
                    if wire is None:
                        continue
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for attempt in range(BIND_ATTEMPTS):
            udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, 0), family=family)
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(
                    lambda r, w: spawn(tcp_client(r, w)), self.host, port, family=family
                )
            except OSError as exc:
                udp.close()
                if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self.port = port
            return udp, tcp
        raise AssertionError("unreachable")

    async def _close(self, ends: tuple[asyncio.DatagramTransport, asyncio.Server]) -> None:
        udp, tcp = ends
        udp.close()
        tcp.close()
        await cancel_other_tasks()
        await tcp.wait_closed()
