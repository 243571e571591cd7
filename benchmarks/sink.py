"""A multi-port SMTP sink for the benchmarks: `python -m benchmarks.sink --ok 2000`.

Why not only Postfix's smtp-sink: it listens on one port, and the exporter's targets must be
distinct (`host:port` is a target's identity), so thousands of targets on 127.0.0.1 need
thousands of ports. This server listens on as many ports as asked (each bound to port 0),
in one process, and answers byte for byte what smtp-sink answers (same greeting, same EHLO
keywords, same replies), so a client does the same work against either. It can also:

- delay every reply by a fixed time (`--delay-ms`), for the timing-fidelity benchmark, and
  measure how late it really sent each reply (its own loop's error, reported by `stats`);
  each command's delay starts when it is read, so a pipelined batch is answered at once after
  one delay. With a delay, connections are read with recvmsg and the kernel's receive
  timestamp (SO_TIMESTAMPNS), so that the delay reported as applied runs from the moment the
  command reached the socket: the time this process took to read it (its loop busy, or its
  CPU taken) is the server's, as a real server's is, not an error of the client's clock;
- not offer PIPELINING (`--no-pipelining`), so that a client that pipelines when offered talks
  one command at a time, as a client that never pipelines does;
- fail on some ports: `--reject-rcpt N` ports answer RCPT with 550, `--reject-banner N`
  ports greet with 554 (failing probes, with transcripts, for the memory benchmark).

On start it prints one JSON line: {"ok": [ports], "reject_rcpt": [...], "reject_banner": [...]}.
It then reads commands on stdin, answering each with one JSON line: `stats` (conversations,
replies, lateness percentiles in seconds: of the delayed replies, and of reading commands
after they arrived), `reset` (forget lateness and conversations), `conversations` (per port,
its last few conversations as [accept unix time, {phase: seconds from the command's arrival
to writing its delayed reply}]: the delays really applied, to compare a client's measurements
with). End of input or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

GREETING = b"220 sink.test ESMTP\r\n"
BANNER_REJECT = b"554 5.7.1 sink.test: no SMTP service here\r\n"
EHLO_REPLY = (
    b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n"
    b"250-XCLIENT NAME HELO\r\n250-XFORWARD NAME ADDR PROTO HELO\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250-DSN\r\n250 \r\n"
)
REPLIES = {
    b"HELO": b"250 sink.test\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 Bye\r\n",
}
RCPT_REJECT = b"550 5.1.1 <postmaster>: Recipient address rejected\r\n"
MESSAGE_OK = b"250 2.0.0 Ok\r\n"
UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"
MAX_BUFFER = 1 << 20
# Linux's SO_TIMESTAMPNS (asm-generic/socket.h; the control message has the same number), which
# the socket module does not name: a struct timespec on the realtime clock per recvmsg.
SO_TIMESTAMPNS = 35
TIMESTAMP_SPACE = socket.CMSG_SPACE(16)
PHASES = {
    b"EHLO": "ehlo",
    b"HELO": "helo",
    b"MAIL": "mail",
    b"RCPT": "rcpt",
    b"DATA": "data",
    b"QUIT": "quit",
}
KEEP_CONVERSATIONS = 16  # per port: a 10 s window at 1 probe/s


class Stats:
    def __init__(self) -> None:
        self.conversations = 0
        self.replies = 0
        self.lateness: list[float] = []
        self.read_lateness: list[float] = []  # from a command's arrival in the socket to its reading
        # port -> its last conversations: (accept unix time, {phase: applied delay})
        self.conversations_by_port: dict[int, deque[tuple[float, dict[str, float]]]] = {}

    def summary(self) -> dict[str, object]:
        late = sorted(self.lateness)
        read_late = sorted(self.read_lateness)

        def pct(values: list[float], p: float) -> float:
            return values[min(len(values) - 1, int(p * len(values)))] if values else 0.0

        return {
            "conversations": self.conversations,
            "replies": self.replies,
            "lateness_p50": pct(late, 0.5),
            "lateness_p99": pct(late, 0.99),
            "lateness_max": late[-1] if late else 0.0,
            "read_lateness_p50": pct(read_late, 0.5),
            "read_lateness_p99": pct(read_late, 0.99),
        }


class SinkProtocol(asyncio.Protocol):
    def __init__(self, port: int, mode: str, delay: float, stats: Stats, ehlo_reply: bytes) -> None:
        self.port = port
        self.ehlo_reply = ehlo_reply
        self.applied: dict[str, float] = {}
        self.mode = mode
        self.delay = delay
        self.stats = stats
        self.buffer = b""
        self.in_data = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        # When the bytes being handled reached the socket (TimedConnection), on perf_counter's
        # clock; 0.0 when only their reading is known.
        self.arrived = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        self.stats.conversations += 1
        if self.delay > 0:
            history = self.stats.conversations_by_port.get(self.port)
            if history is None:
                history = self.stats.conversations_by_port[self.port] = deque(maxlen=KEEP_CONVERSATIONS)
            history.append((time.time(), self.applied))
        self.reply(BANNER_REJECT if self.mode == "reject_banner" else GREETING, None)

    def reply(self, data: bytes, phase: str | None, close: bool = False) -> None:
        if self.delay > 0:
            received = time.perf_counter()
            arrived = self.arrived or received
            if phase is not None:
                self.stats.read_lateness.append(received - arrived)
            self.loop.call_later(self.delay, self._send, data, close, phase, received, arrived)
        else:
            self._send(data, close, None, 0.0, 0.0)

    def _send(self, data: bytes, close: bool, phase: str | None, received: float, arrived: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if received:
            sent = time.perf_counter()
            self.stats.lateness.append(sent - received - self.delay)
            if phase is not None:
                self.applied[phase] = sent - arrived
        self.stats.replies += 1
        transport.write(data)
        if close:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_BUFFER:
                        self.buffer = self.buffer[-4:]
                    return
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                self.reply(MESSAGE_OK, "message")
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_BUFFER:
                    self.buffer = b""
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
            verb = line[:4].upper()
            phase = PHASES.get(verb)
            if verb == b"EHLO":
                self.reply(self.ehlo_reply, phase)
            elif verb == b"RCPT" and self.mode == "reject_rcpt":
                self.reply(RCPT_REJECT, phase)
            elif verb == b"DATA":
                self.in_data = True
                self.reply(REPLIES[verb], phase)
            elif verb == b"QUIT":
                self.reply(REPLIES[verb], phase, close=True)
            else:
                self.reply(REPLIES.get(verb, UNKNOWN), phase)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class TimedConnection:
    """A connection read with recvmsg, each chunk stamped with the kernel's receive time, and
    written with plain sends: the few methods of a transport that SinkProtocol uses."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: SinkProtocol) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.closing = False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        protocol.connection_made(self)  # type: ignore[arg-type]
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, TIMESTAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        arrived = 0.0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                # The realtime clock's reading moved to perf_counter's (both read just now).
                arrived = seconds + nanoseconds / 1e9 - (time.time() - time.perf_counter())
        self.protocol.arrived = arrived
        self.protocol.data_received(data)

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1
        # Replies are a few hundred bytes: a send that does not take one whole means the client
        # stopped reading, and a benchmark's client that does is broken; hang up on it.
        if sent != len(data):
            self.close()

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.protocol.connection_lost(None)


def _serve_timed(
    loop: asyncio.AbstractEventLoop, listener: socket.socket, protocol: Callable[[], SinkProtocol]
) -> None:
    """Accept on `listener` from the loop, each connection a TimedConnection."""
    listener.setblocking(False)

    def acceptable() -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        TimedConnection(loop, sock, protocol())

    loop.add_reader(listener.fileno(), acceptable)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    delay = args.delay_ms / 1000.0
    ehlo_reply = EHLO_REPLY.replace(b"250-PIPELINING\r\n", b"") if args.no_pipelining else EHLO_REPLY
    ports: dict[str, list[int]] = {"ok": [], "reject_rcpt": [], "reject_banner": []}
    servers = []
    for mode, count in (
        ("ok", args.ok),
        ("reject_rcpt", args.reject_rcpt),
        ("reject_banner", args.reject_banner),
    ):
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(args.backlog)
            ports[mode].append(sock.getsockname()[1])
            port = sock.getsockname()[1]

            def protocol(port: int = port, mode: str = mode) -> SinkProtocol:
                return SinkProtocol(port, mode, delay, stats, ehlo_reply)

            if delay > 0:
                _serve_timed(loop, sock, protocol)
            else:
                servers.append(await loop.create_server(protocol, sock=sock))
    print(json.dumps(ports), flush=True)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                stop.set()
                return
            if line.strip() == b"stats":
                print(json.dumps(stats.summary()), flush=True)
            elif line.strip() == b"reset":
                stats.lateness.clear()
                stats.read_lateness.clear()
                stats.conversations_by_port.clear()
                print("{}", flush=True)
            elif line.strip() == b"conversations":
                history = {port: list(items) for port, items in stats.conversations_by_port.items()}
                print(json.dumps(history), flush=True)

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ok", type=int, default=1, help="ports that answer like smtp-sink")
    parser.add_argument("--reject-rcpt", type=int, default=0, help="ports that answer RCPT with 550")
    parser.add_argument("--reject-banner", type=int, default=0, help="ports that greet with 554")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before every reply")
    parser.add_argument("--no-pipelining", action="store_true", help="leave PIPELINING out of EHLO")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = args.ok + args.reject_rcpt + args.reject_banner
    if needed + 64 > hard:
        sys.exit(f"sink: {needed} ports need more file descriptors than the limit {hard} (ulimit -n)")
    runner: object = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    runner(serve(args))  # type: ignore[operator]


if __name__ == "__main__":
    main()
