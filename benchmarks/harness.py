"""Process management and /proc measurements shared by the benchmarks.

Every process a benchmark starts goes through `Processes`: it runs in its own session (so
its whole process group can be killed), with the parent-death signal set where the kernel
keeps it, its output in a log file, and it is stopped (SIGTERM to the group, then SIGKILL)
when the `with` block ends, whatever ends it: normal exit, an exception, Ctrl-C or SIGTERM
(`run.py` turns SIGTERM into KeyboardInterrupt so that `finally` blocks run).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

# Places where Debian installs binaries that are not on an ordinary user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")


class BenchmarkError(RuntimeError):
    """A benchmark could not run (a process did not start, a server misbehaved...)."""


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the harness dies, even by SIGKILL.

    (The kernel clears this for set-user-ID programs and on credential changes, e.g. smtp-sink
    dropping to `nobody`: those rely on the harness' own cleanup.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stdout_buffer: bytes = b""  # read from the stdout pipe, not yet returned as a line

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchmarkError(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.log_tail()}"
            )


@dataclass
class Processes:
    """Starts processes and guarantees they are all gone when the `with` block ends."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="smtp-exporter-bench-")))
    keep_workdir: bool = False
    _running: list[Process] = field(default_factory=list)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.workdir / name

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
        env: dict[str, str] | None = None,
    ) -> Process:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(args),
                stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=_die_with_parent,
                close_fds=True,
                cwd=self.workdir,
                env=env,
            )
        process = Process(name, popen, log_path)
        self._running.append(process)
        return process

    def stop(self, process: Process, *, grace: float = 3.0) -> None:
        if process in self._running:
            self._running.remove(process)
        _kill_group(process, grace)

    def stop_all(self) -> None:
        while self._running:
            process = self._running.pop()
            _kill_group(process, 3.0)


def _kill_group(process: Process, grace: float) -> None:
    popen = process.popen
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace)
    # Whatever is left in the group (the leader may be gone while children live).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace)
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


# -- /proc measurements ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads, live and exited), 1/CLK_TCK resolution."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        data = handle.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_precise(pid: int) -> float:
    """CPU time of a process' live threads in nanosecond resolution (from schedstat), for short
    windows such as one scrape; falls back to `cpu_seconds` where schedstat is missing."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return cpu_seconds(pid)
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9 if total else cpu_seconds(pid)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchmarkError(f"no VmRSS for process {pid}")


def listening_ports(pid: int) -> list[int]:
    """TCP ports a process listens on (IPv4 and IPv6), from its socket inodes and /proc/net."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as handle:
                next(handle)
                for line in handle:
                    parts = line.split()
                    if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                        ports.append(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return sorted(set(ports))


def wait_listening(process: Process, *, timeout: float = 15.0) -> int:
    """The port `process` listens on (it bound port 0 itself), once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        ports = listening_ports(process.pid)
        if ports:
            return ports[0]
        time.sleep(0.02)
    raise BenchmarkError(f"{process.name} did not listen within {timeout:.0f}s:\n{process.log_tail()}")


def read_line(process: Process, *, timeout: float) -> bytes:
    """One line from a process' stdout pipe, or BenchmarkError at the deadline."""
    assert process.popen.stdout is not None
    fd = process.popen.stdout.fileno()
    deadline = time.monotonic() + timeout
    while b"\n" not in process.stdout_buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchmarkError(
                f"{process.name} did not answer within {timeout:.0f}s:\n{process.log_tail()}"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                process.popen.wait(timeout=1)
                raise BenchmarkError(f"{process.name} closed its output:\n{process.log_tail()}")
            process.stdout_buffer += chunk
    line, _, process.stdout_buffer = process.stdout_buffer.partition(b"\n")
    return line + b"\n"


# -- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    seconds: float  # wall time from sending the request to the last byte of the body


def http_get(
    port: int,
    path: str,
    *,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> HttpResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        started = time.perf_counter()
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return HttpResponse(response.status, body, time.perf_counter() - started)
    finally:
        connection.close()


def wait_http_ok(process: Process, port: int, path: str, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        process.check_alive()
        try:
            if http_get(port, path, timeout=2.0).status == 200:
                return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchmarkError(
        f"{process.name}: GET {path} not 200 within {timeout:.0f}s ({last}):\n{process.log_tail()}"
    )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so every `finally` (and so every cleanup) runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def python() -> str:
    return sys.executable
