"""SMTP peers for the soak test, in their own process: many healthy ports, and ports that come and go.

    python -m tests.soak.peers HEALTHY FLAPPY FLAP_SECONDS

Prints one JSON line `{"healthy": [ports], "flappy": [ports]}`, then runs until stdin
closes. A flappy port listens for FLAP_SECONDS, then stops listening (connections are
refused, open ones reset) for FLAP_SECONDS, and so on, always on the same port; each
flappy port starts at a different point of that cycle.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.servers.scripted import BANNER, DEFAULT_REPLIES


class Responder(asyncio.Protocol):
    """A minimal, correct SMTP server: enough for EHLO/MAIL/RCPT/DATA/QUIT conversations."""

    def __init__(self, open_set: set[Responder]) -> None:
        self.open_set = open_set
        self.buffer = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open_set.add(self)
        transport.write(BANNER)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            if self.in_data:
                if line.rstrip(b"\r") == b".":
                    self.in_data = False
                    self.transport.write(DEFAULT_REPLIES["."])
                continue
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
            self.transport.write(DEFAULT_REPLIES.get(verb, b"500 5.5.2 what\r\n"))
            if verb == "DATA":
                self.in_data = True
            elif verb == "QUIT":
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_set.discard(self)


async def serve(port: int, open_set: set[Responder]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Responder(open_set), "127.0.0.1", port, reuse_address=True)


async def flap(server: asyncio.Server, open_set: set[Responder], seconds: float, offset: float) -> None:
    port = server.sockets[0].getsockname()[1]
    await asyncio.sleep(offset)
    while True:
        server.close()
        for responder in list(open_set):
            if responder.transport is not None:
                responder.transport.abort()
        await asyncio.sleep(seconds)
        for _ in range(50):
            try:
                server = await serve(port, open_set)
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(seconds)


async def main(healthy: int, flappy: int, seconds: float) -> None:
    open_set: set[Responder] = set()
    healthy_servers = [await serve(0, open_set) for _ in range(healthy)]
    flappy_sets: list[set[Responder]] = [set() for _ in range(flappy)]
    flappy_servers = [await serve(0, flappy_set) for flappy_set in flappy_sets]
    ports = {
        "healthy": [s.sockets[0].getsockname()[1] for s in healthy_servers],
        "flappy": [s.sockets[0].getsockname()[1] for s in flappy_servers],
    }
    tasks = [
        asyncio.create_task(flap(server, flappy_set, seconds, seconds * 2 * i / max(flappy, 1)))
        for i, (server, flappy_set) in enumerate(zip(flappy_servers, flappy_sets, strict=True))
    ]
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until stdin closes
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
