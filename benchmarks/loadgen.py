"""A /probe load generator that runs in its own process: `python -m benchmarks.loadgen ...`.

wrk measures the maximum request rate; this one sends requests at a fixed rate (open loop,
with at most `--concurrency` in flight), spread over a list of targets, and reads each
response's `probe_success` and `probe_duration_seconds`: it drives blackbox_exporter at the
probe rate the scheduled exporter ran at, and collects blackbox's own duration measurements.

Prints one JSON line: requests, by HTTP status, probe successes, late starts (no free
connection at the planned time), and with --durations every probe_duration_seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from urllib.parse import urlencode

import aiohttp

SUCCESS = re.compile(rb"^probe_success (\S+)$", re.MULTILINE)
DURATION = re.compile(rb"^probe_duration_seconds (\S+)$", re.MULTILINE)


async def run(args: argparse.Namespace, targets: list[str]) -> dict[str, object]:
    urls = [f"{args.base}/probe?{urlencode({'target': t, 'module': args.module})}" for t in targets]
    statuses: dict[str, int] = {}
    successes = 0
    late = 0
    durations: list[float] = []
    semaphore = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal successes
        try:
            async with session.get(url) as response:
                body = await response.read()
                key = str(response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            key = type(exc).__name__
            body = b""
        finally:
            semaphore.release()
        statuses[key] = statuses.get(key, 0) + 1
        match = SUCCESS.search(body)
        if match and float(match.group(1)) == 1.0:
            successes += 1
            if args.durations:
                found = DURATION.search(body)
                if found:
                    durations.append(float(found.group(1)))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        started = loop.time()
        end = started + args.duration
        sent = 0
        while True:
            now = loop.time()
            if now >= end:
                break
            if args.rate > 0:
                planned = started + sent / args.rate
                if planned > now:
                    await asyncio.sleep(planned - now)
                    continue
            if semaphore.locked():
                late += 1
            await semaphore.acquire()
            task = loop.create_task(one(session, urls[sent % len(urls)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=args.timeout + 1)
        elapsed = loop.time() - started
    return {
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "probe_successes": successes,
        "late_starts": late,
        "seconds": elapsed,
        "durations": durations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--module", required=True)
    parser.add_argument("--targets-file", required=True, help="one target per line")
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second (0: closed loop)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, required=True, help="seconds of sending")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--durations", action="store_true", help="collect probe_duration_seconds")
    args = parser.parse_args()
    runner = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    with open(args.targets_file) as handle:
        targets = [line.strip() for line in handle if line.strip()]
    started = time.monotonic()
    result = runner(run(args, targets))
    result["wall_seconds"] = time.monotonic() - started
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
