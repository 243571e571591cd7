"""Serves every hostile peer of the catalogue from a separate process.

    python -m tests.hostile.peer_host MATERIAL_JSON [NAME ...]

A separate process keeps the peers' own buffers (a 1 MB certificate, 100,000 greeting
lines) out of the test process, whose memory is measured while it probes, and keeps their
CPU off the event loop whose latencies are checked. It prints one JSON line
`{"ports": {name: port}}`, then answers commands on stdin, one JSON line each:

    status NAME   -> {"accepted": n, "open": n, "errors": [...]}   (connections of that peer)
    quit          -> exits (so does end of input)
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Protocol

from tests.hostile.catalogue import AUTH_ECHO, BY_NAME, CATALOGUE, ECHO
from tests.hostile.certs import Material
from tests.servers.scripted import BANNER, ScriptedServer

AUTH_EHLO = b"250-mail.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"


class Peer(Protocol):
    port: int

    def status(self) -> dict[str, object]: ...

    async def stop(self) -> None: ...


class _LineServerProtocol(asyncio.Protocol):
    def __init__(self, owner: LinePeer) -> None:
        self.owner = owner
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.login_step = 0  # AUTH LOGIN: 1 after the username prompt, 2 after the password prompt

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.accepted += 1
        self.owner.open.add(self)
        if self.owner.kind != ECHO:
            transport.write(BANNER)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.transport.write(self.answer(line + b"\n"))

    def answer(self, line: bytes) -> bytes:
        if self.owner.kind != AUTH_ECHO:
            return line
        words = line.split()
        verb = words[0].upper() if words else b""
        if self.login_step == 1:
            self.login_step = 2
            return b"334 UGFzc3dvcmQ6\r\n"
        if self.login_step == 2 or (verb == b"AUTH" and len(words) > 2):
            self.login_step = 0
            return b"535 5.7.8 authentication failed for: " + line.rstrip(b"\r\n") + b"\r\n"
        if verb == b"AUTH":
            self.login_step = 1
            return b"334 VXNlcm5hbWU6\r\n"
        if verb == b"EHLO":
            return AUTH_EHLO
        if verb == b"QUIT":
            return b"221 bye\r\n"
        return b"500 5.5.2 what\r\n"

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.open.discard(self)


class LinePeer:
    """Line-by-line custom peers: an echo service (with or without a greeting), and an AUTH
    server that rejects credentials by quoting them back."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.accepted = 0
        self.open: set[_LineServerProtocol] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> LinePeer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _LineServerProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def status(self) -> dict[str, object]:
        return {"accepted": self.accepted, "open": len(self.open), "errors": []}

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in list(self.open):
            if protocol.transport is not None:
                protocol.transport.abort()


class ScriptedPeer:
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.port = server.port

    def status(self) -> dict[str, object]:
        connections = self.server.connections
        return {
            "accepted": len(connections),
            "open": self.server.connections_open,
            "errors": [c.error for c in connections if c.error],
        }

    async def stop(self) -> None:
        await self.server.stop()


async def main(material_file: str, names: list[str]) -> None:
    material = Material.load(material_file)
    peers: dict[str, Peer] = {}
    for name in names or [h.name for h in CATALOGUE]:
        hostile = BY_NAME[name]
        if isinstance(hostile.script, str):
            peers[name] = await LinePeer(hostile.script).start()
        else:
            peers[name] = ScriptedPeer(await ScriptedServer(hostile.script(material)).start())
    print(json.dumps({"ports": {name: peer.port for name, peer in peers.items()}}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        command = (await reader.readline()).decode().split()
        if not command or command[0] == "quit":
            break
        if command[0] == "status" and len(command) == 2 and command[1] in peers:
            print(json.dumps(peers[command[1]].status()), flush=True)
        else:
            print(json.dumps({"error": f"bad command {command!r}"}), flush=True)
    for peer in peers.values():
        await peer.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
