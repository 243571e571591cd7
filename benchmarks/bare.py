"""The floor of benchmark 1: the same conversation with nothing else, `python -m benchmarks.bare ...`.

One process, on uvloop when it is installed (as the exporter), that runs benchmark 1's
conversation (connect, 220, EHLO, MAIL, RCPT, DATA, message, QUIT) against a list of ports at
a fixed rate, started in batches on the exporter's start grid for that rate. Each reply is
only checked for its code: no timing, no kept result, no metrics. This is what the issue's
"bare asyncio loop" figure is; its CPU per conversation is the least any exporter on this
loop can spend, and the rest of smtp-exporter's is the cost of what it measures and keeps.

Prints one JSON line: conversations completed and failed, and CPU seconds (process time)
from the first start to the last end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from smtp_exporter.scheduler import start_grid


class Conversation(asyncio.Protocol):
    """Sends each command when the previous reply's last line arrives; `done` gets success."""

    def __init__(self, script: tuple[tuple[bytes, bytes], ...], done: asyncio.Future[bool]) -> None:
        self.script = script  # (expected reply code, command sent after it)
        self.done = done
        self.buffer = b""
        self.step = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if line[3:4] == b"-":
                continue  # not the last line of the reply
            expected, command = self.script[self.step]
            if line[:3] != expected:
                self._finish(False)
                return
            self.step += 1
            if command:
                self.transport.write(command)
            else:
                self._finish(True)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)

    def _finish(self, ok: bool) -> None:
        assert self.transport is not None
        self.transport.close()
        if not self.done.done():
            self.done.set_result(ok)


def script(ehlo_name: str, message: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"220", f"EHLO {ehlo_name}\r\n".encode()),
        (b"250", b"MAIL FROM:<>\r\n"),
        (b"250", b"RCPT TO:<postmaster>\r\n"),
        (b"250", b"DATA\r\n"),
        (b"354", message),
        (b"250", b"QUIT\r\n"),
        (b"221", b""),
    )


async def run(
    ports: list[int], rate: float, seconds: float, steps: tuple[tuple[bytes, bytes], ...]
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    results = {"completed": 0, "failed": 0}

    async def one(port: int) -> None:
        done: asyncio.Future[bool] = loop.create_future()
        try:
            await loop.create_connection(lambda: Conversation(steps, done), "127.0.0.1", port)
            ok = await asyncio.wait_for(done, 5.0)
        except (OSError, TimeoutError):
            ok = False
        results["completed" if ok else "failed"] += 1

    tasks: set[asyncio.Task[None]] = set()
    step = start_grid(rate)
    cpu0 = time.process_time()
    started = loop.time()
    sent = 0
    while loop.time() - started < seconds:
        due = int((loop.time() - started) * rate) + 1
        while sent < due:
            task = loop.create_task(one(ports[sent % len(ports)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(step)
    if tasks:
        await asyncio.wait(tasks)
    return {**results, "cpu_seconds": time.process_time() - cpu0, "seconds": loop.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ports-file", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--ehlo", required=True)
    parser.add_argument("--message-file", required=True, help="the message, ending in CRLF.CRLF")
    args = parser.parse_args()
    ports = [int(line) for line in Path(args.ports_file).read_text().split()]
    steps = script(args.ehlo, Path(args.message_file).read_bytes())
    coroutine = run(ports, args.rate, args.duration, steps)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coroutine)
    else:
        result = uvloop.run(coroutine)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
