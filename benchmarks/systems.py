"""The systems under test and their peers: how each is configured, started and measured.

- smtp-exporter, scheduled or /probe, started as `python -m smtp_exporter` with the checkout under
  test first on PYTHONPATH (this repository, or the baseline of `--baseline PATH`);
- blackbox_exporter with a tcp `query_response` module scripting the same conversation
  (connect, 220, EHLO, MAIL FROM:<>, RCPT TO:<postmaster>, DATA, a message, QUIT);
- Postfix's smtp-sink and the suite's multi-port sink (`benchmarks/sink.py`) as SMTP servers;
- wrk and the suite's rate-driven load generator (`benchmarks/loadgen.py`) as HTTP clients.

Every listener binds port 0 on 127.0.0.1; ports are read back from /proc or from the process.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from benchmarks.harness import (
    BenchmarkError,
    Process,
    Processes,
    find_binary,
    http_get,
    python,
    read_line,
    wait_http_ok,
    wait_listening,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULE = "smtp_full"  # the module name on both exporters
EHLO_NAME = "probe.bench.test"
BLACKBOX = "prometheus-blackbox-exporter"

# -- SMTP servers ------------------------------------------------------------------------------


@dataclass
class Sink:
    """The suite's multi-port sink (benchmarks/sink.py) in its own process."""

    process: Process
    ports: dict[str, list[int]]

    def targets(self, mode: str = "ok") -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports[mode]]

    def command(self, command: str) -> Any:
        stdin = self.process.popen.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return json.loads(read_line(self.process, timeout=60.0))


def start_sink(
    procs: Processes,
    *,
    ok: int,
    reject_rcpt: int = 0,
    reject_banner: int = 0,
    delay_ms: float = 0.0,
    pipelining: bool = True,
    name: str = "sink",
) -> Sink:
    args = [python(), "-m", "benchmarks.sink", f"--ok={ok}", f"--reject-rcpt={reject_rcpt}"]
    args += [f"--reject-banner={reject_banner}", f"--delay-ms={delay_ms}"]
    if not pipelining:
        args.append("--no-pipelining")
    process = procs.start(name, args, stdin=subprocess.PIPE, stdout_pipe=True, env=_env())
    ports = json.loads(read_line(process, timeout=60.0))
    return Sink(process, ports)


def start_smtp_sink(procs: Processes, *, name: str = "smtp-sink") -> tuple[Process, int]:
    """Postfix's smtp-sink on 127.0.0.1, port 0, up to 1024 sessions at once."""
    binary = find_binary("smtp-sink")
    if binary is None:
        raise BenchmarkError("smtp-sink not found (Debian package postfix)")
    args = [binary, "-h", "sink.test", "-m", "1024"]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
    args += ["127.0.0.1:0", "1024"]
    process = procs.start(name, args)
    return process, wait_listening(process)


# -- smtp-exporter -----------------------------------------------------------------------------


def _env(tree: Path = REPO_ROOT) -> dict[str, str]:
    """The environment of the Python processes: `tree` first on the import path, so that an
    exporter process imports that checkout's smtp_exporter (this one's, or a baseline's), and
    this checkout next, for the suite's own tools (benchmarks.sink, ...)."""
    env = dict(os.environ)
    paths = [str(tree), str(REPO_ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, paths)))
    return env


def imported_from(tree: Path) -> Path:
    """The directory of the smtp_exporter package a process started for `tree` imports."""
    code = "import smtp_exporter, os; print(os.path.dirname(os.path.abspath(smtp_exporter.__file__)))"
    out = subprocess.run(
        [python(), "-c", code], env=_env(tree), capture_output=True, text=True, timeout=60, cwd="/"
    )
    if out.returncode != 0:
        raise BenchmarkError(f"cannot import smtp_exporter from {tree}:\n{out.stderr.strip()}")
    return Path(out.stdout.strip())


def exporter_config(
    targets: Sequence[str],
    *,
    interval: float,
    timeout: float,
    max_concurrency: int = 4096,
) -> str:
    """A config file: every target with module smtp_full (the built-in module's settings, with a
    fixed EHLO name and a timeout below the short benchmark intervals)."""
    lines = [
        "modules:",
        f"  {MODULE}:",
        "    transaction: message",
        f"    ehlo: {EHLO_NAME}",
        f"    timeout: {int(timeout * 1000)}ms",
        "scheduler:",
        f"  max_concurrency: {max_concurrency}",
        "targets:" if targets else "targets: []",
    ]
    interval_text = f"{int(interval * 1000)}ms"
    lines += [f"  - {{target: '{t}', module: {MODULE}, interval: {interval_text}}}" for t in targets]
    return "\n".join(lines) + "\n"


@dataclass
class Exporter:
    process: Process
    port: int
    config_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scrape(self, *, timeout: float = 60.0, compressed: bool = False) -> bytes:
        """The /metrics body; `compressed`: asked for with gzip, as Prometheus asks, and
        decompressed (a body not gzipped then fails: the scrape was not the one asked for)."""
        headers = {"Accept-Encoding": "gzip"} if compressed else None
        response = http_get(self.port, "/metrics", timeout=timeout, headers=headers)
        if response.status != 200:
            raise BenchmarkError(f"/metrics answered {response.status}: {response.body[:200]!r}")
        if compressed:
            return gzip.decompress(response.body)
        return response.body

    def reload(self, config_text: str) -> None:
        """Replace the config file and POST /-/reload."""
        assert self.config_path is not None
        self.config_path.write_text(config_text)
        response = http_get(self.port, "/-/reload", method="POST", timeout=60.0)
        if response.status != 200:
            raise BenchmarkError(f"/-/reload answered {response.status}: {response.body[:300]!r}")


def start_exporter(
    procs: Processes,
    config_text: str,
    *,
    name: str = "smtp-exporter",
    extra_args: Iterable[str] = (),
    tree: Path = REPO_ROOT,
) -> Exporter:
    """smtp-exporter as `python -m smtp_exporter`, importing the smtp_exporter of `tree`."""
    config_path = procs.path(f"{name}.yml")
    config_path.write_text(config_text)
    args = [python(), "-m", "smtp_exporter", f"--config.file={config_path}"]
    args += ["--web.listen-address=127.0.0.1:0", "--log.level=warn", *extra_args]
    process = procs.start(name, args, env=_env(tree))
    port = wait_listening(process, timeout=60.0)
    wait_http_ok(process, port, "/-/ready", timeout=60.0)
    return Exporter(process, port, config_path)


# -- blackbox_exporter -------------------------------------------------------------------------

# The message our engine sends (protocol/message.py), with fixed Date and Message-ID.
_MESSAGE = (
    "Date: Thu, 01 Jan 2026 00:00:00 -0000\r\n"
    f"Message-ID: <smtp-exporter.0123456789abcdef@{EHLO_NAME}>\r\n"
    f"From: <probe@{EHLO_NAME}>\r\n"
    "To: <postmaster>\r\n"
    "Subject: smtp-exporter probe\r\n"
    "\r\n"
    "This message was sent by smtp-exporter to check that mail is accepted.\r\n"
    ".\r"  # blackbox appends "\n" to every send
)


def blackbox_config(*, timeout: float = 5.0) -> str:
    """One tcp module scripting the full conversation; JSON strings are YAML double-quoted scalars."""
    steps = [
        {"expect": "^220 "},
        {"send": f"EHLO {EHLO_NAME}\r"},
        {"expect": "^250 "},  # the last line of the multi-line EHLO reply
        {"send": "MAIL FROM:<>\r"},
        {"expect": "^250 "},
        {"send": "RCPT TO:<postmaster>\r"},
        {"expect": "^25[01] "},
        {"send": "DATA\r"},
        {"expect": "^354 "},
        {"send": _MESSAGE},
        {"expect": "^250 "},
        {"send": "QUIT\r"},
        {"expect": "^221 "},
    ]
    lines = [
        "modules:",
        f"  {MODULE}:",
        "    prober: tcp",
        f"    timeout: {int(timeout * 1000)}ms",
        "    tcp:",
        "      preferred_ip_protocol: ip4",
        "      query_response:",
    ]
    for step in steps:
        ((key, value),) = step.items()
        lines.append(f"        - {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def start_blackbox(procs: Processes, *, name: str = "blackbox_exporter", timeout: float = 5.0) -> Exporter:
    binary = find_binary(BLACKBOX)
    if binary is None:
        raise BenchmarkError(f"{BLACKBOX} not found (Debian package prometheus-blackbox-exporter)")
    config_path = procs.path(f"{name}.yml")
    config_path.write_text(blackbox_config(timeout=timeout))
    args = [binary, f"--config.file={config_path}", "--web.listen-address=127.0.0.1:0", "--log.level=warn"]
    process = procs.start(name, args)
    port = wait_listening(process)
    wait_http_ok(process, port, "/-/healthy")
    return Exporter(process, port)


def probe_once(exporter: Exporter, target: str) -> bytes:
    """One /probe request; BenchmarkError unless the probe succeeded (the setup works)."""
    path = "/probe?" + urlencode({"target": target, "module": MODULE})
    response = http_get(exporter.port, path, timeout=15.0)
    if response.status != 200 or not re.search(rb"^probe_success 1$", response.body, re.MULTILINE):
        raise BenchmarkError(
            f"{exporter.process.name}: probe of {target} did not succeed ({response.status}):\n"
            f"{response.body[:1500].decode(errors='replace')}\n{exporter.process.log_tail()}"
        )
    return response.body


# -- load generators ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_second: float
    non_2xx: int
    socket_errors: int


def run_wrk(procs: Processes, url: str, *, connections: int, threads: int, seconds: float) -> WrkResult:
    binary = find_binary("wrk")
    if binary is None:
        raise BenchmarkError("wrk not found (Debian package wrk)")
    args = [
        binary,
        f"-c{connections}",
        f"-t{threads}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        url,
    ]
    process = procs.start("wrk", args)
    try:
        process.popen.wait(timeout=seconds + 30)
    finally:
        procs.stop(process)
    text = process.log_path.read_text(errors="replace")
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if process.popen.returncode != 0 or not total or not rate:
        raise BenchmarkError(f"wrk failed (status {process.popen.returncode}):\n{text}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * scale,
        requests_per_second=float(rate.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_loadgen(
    procs: Processes,
    exporter: Exporter,
    targets: Sequence[str],
    *,
    rate: float,
    seconds: float,
    concurrency: int,
    durations: bool = False,
) -> dict[str, object]:
    """Drive `exporter`'s /probe at `rate` requests/s over `targets` (benchmarks/loadgen.py)."""
    targets_file = procs.path("loadgen-targets.txt")
    targets_file.write_text("\n".join(targets) + "\n")
    args = [python(), "-m", "benchmarks.loadgen", f"--base={exporter.base}", f"--module={MODULE}"]
    args += [f"--targets-file={targets_file}", f"--rate={rate}", f"--concurrency={concurrency}"]
    args += [f"--duration={seconds}"] + (["--durations"] if durations else [])
    return _run_for_json(procs, "loadgen", args, seconds)


def run_bare(procs: Processes, targets: Sequence[str], *, rate: float, seconds: float) -> dict[str, object]:
    """Benchmark 1's conversation on a bare loop (benchmarks/bare.py), at `rate` over `targets`."""
    ports_file = procs.path("bare-ports.txt")
    ports_file.write_text("\n".join(target.rsplit(":", 1)[1] for target in targets) + "\n")
    message_file = procs.path("bare-message.txt")
    message_file.write_bytes((_MESSAGE + "\n").encode())
    args = [python(), "-m", "benchmarks.bare", f"--ports-file={ports_file}", f"--rate={rate}"]
    args += [f"--duration={seconds}", f"--ehlo={EHLO_NAME}", f"--message-file={message_file}"]
    return _run_for_json(procs, "bare", args, seconds)


def _run_for_json(procs: Processes, name: str, args: list[str], seconds: float) -> dict[str, object]:
    """Run one of the suite's Python tools for about `seconds` and return the JSON line it prints."""
    process = procs.start(name, args, stdout_pipe=True, env=_env())
    try:
        line = read_line(process, timeout=seconds + 60)
    finally:
        procs.stop(process)
    return json.loads(line)  # type: ignore[no-any-return]


# -- reading /metrics --------------------------------------------------------------------------


def samples(body: bytes, name: str) -> Iterator[tuple[bytes, float]]:
    """(label text, value) of every sample called `name` in a text-format body."""
    prefix = name.encode()
    for line in body.split(b"\n"):
        if not line.startswith(prefix) or line.startswith(b"#"):
            continue
        rest = line[len(prefix) :]
        if rest.startswith(b"{"):
            labels, _, value = rest[1:].rpartition(b"} ")
        elif rest.startswith(b" "):
            labels, value = b"", rest[1:]
        else:
            continue
        yield labels, float(value.split()[0])


def metric_sum(body: bytes, name: str) -> float:
    return sum(value for _, value in samples(body, name))


def metric_value(body: bytes, name: str) -> float:
    for _, value in samples(body, name):
        return value
    raise BenchmarkError(f"no sample {name} in /metrics")


def label_value(labels: bytes, name: str) -> str | None:
    match = re.search(rb"(?:^|,)" + name.encode() + rb'="((?:[^"\\]|\\.)*)"', labels)
    return match.group(1).decode() if match else None


def wait_probes(exporter: Exporter, minimum: float, *, timeout: float) -> bytes:
    """Scrape until smtp_probes_total summed over targets reaches `minimum`; the last body."""
    return _scrape_until(
        exporter, lambda body: metric_sum(body, "smtp_probes_total"), minimum, "probes done", timeout
    )


def wait_targets_probed(exporter: Exporter, count: int, *, timeout: float) -> bytes:
    """Scrape until `count` targets each have at least one result."""
    return _scrape_until(
        exporter,
        lambda body: sum(1 for _ in samples(body, "smtp_probes_total")),
        count,
        "targets probed",
        timeout,
    )


def _scrape_until(
    exporter: Exporter, measure: Callable[[bytes], float], minimum: float, what: str, timeout: float
) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        body = exporter.scrape()
        done = measure(body)
        if done >= minimum:
            return body
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"{exporter.process.name}: only {done:.0f} of {minimum:.0f} {what} in {timeout:.0f}s"
            )
        exporter.process.check_alive()
        time.sleep(0.25)
