"""The benchmark sink's delays are measured from a command's arrival in its socket.

Benchmark 4 judges the exporter against the delay the sink applied. If that delay ran from the
sink's reading of a command, the time the sink took to get to it (its loop busy, its CPU taken)
would count as the client's error instead of the server's time. Here the sink is stopped while
a command arrives, so it reads the command late by a known margin."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DELAY_MS = 20
STOPPED = 0.3  # seconds the sink is kept from reading the command


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.splitlines()[-1][3:4] == b"-":
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def _ask(sink: subprocess.Popen[bytes], command: str) -> Any:
    assert sink.stdin is not None and sink.stdout is not None
    sink.stdin.write(command.encode() + b"\n")
    sink.stdin.flush()
    return json.loads(sink.stdout.readline())


def test_a_command_read_late_counts_in_the_delay_applied() -> None:
    sink = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sink", "--ok=1", f"--delay-ms={DELAY_MS}", "--no-pipelining"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert sink.stdout is not None
        port = json.loads(sink.stdout.readline())["ok"][0]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _read_reply(sock).startswith(b"220 ")
            sink.send_signal(signal.SIGSTOP)
            try:
                sock.sendall(b"EHLO probe.test\r\n")  # arrives now; read after SIGCONT
                time.sleep(STOPPED)
            finally:
                sink.send_signal(signal.SIGCONT)
            assert _read_reply(sock).startswith(b"250-sink.test")
            sock.sendall(b"QUIT\r\n")
            assert _read_reply(sock).startswith(b"221 ")
        history = _ask(sink, "conversations")[str(port)]
        assert isinstance(history, list) and len(history) == 1, history
        applied = history[0][1]["ehlo"]
        # From the arrival: the time stopped, then the delay. From the read it would be ~20 ms.
        assert STOPPED + DELAY_MS / 1000 * 0.5 <= applied < STOPPED + 5.0, applied
        stats = _ask(sink, "stats")
        assert stats["read_lateness_p99"] >= STOPPED * 0.9, stats
    finally:
        sink.terminate()
        sink.wait(timeout=10)
