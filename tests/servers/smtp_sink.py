"""Postfix's smtp-sink (Debian package postfix) as a real, fast MTA-side peer.

    with SmtpSink(hard_reject=["RCPT"]) as sink:     # 550 at RCPT ("-f RCPT")
        probe(sink.target)

smtp-sink has no way to inherit a listening socket, so it binds port 0 itself and the
port the kernel gave it is read from /proc (the socket inode of its fd, looked up in
/proc/PID/net/tcp): no port is ever chosen in advance, so nothing can race. As root,
smtp-sink refuses to run without `-u`, so it drops to the user `nobody` after binding.

Options map to smtp-sink flags (see `man 1 smtp-sink`; command lists accept e.g.
"CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", ".", "RSET", "NOOP", "QUIT"):
  soft_reject (-r)   answer 4xx to these commands (default "450 4.3.0 Error: command failed")
  hard_reject (-f)   answer 5xx to these commands (default "500 5.3.0 Error: command failed")
  disconnect (-q)    close the connection, without a reply, after these commands
  shutdown (-Q)      answer 421 and close after these commands
  soft_bounce_reply (-b), hard_bounce_reply (-B): replace those default reject replies
  data_delay (-w)    whole seconds to wait before answering DATA
  command_delays (-W) {"RCPT": 2, ...}: whole seconds to wait before answering a command
  abort_after_data (-A) seconds after the 354 to answer 550 and stop reading
  pipelining=False (-p), esmtp=False (-e), enhanced_status_codes=False (-E),
  eightbitmime=False (-8), auth=False (-a), dsn=False (-N), xclient=False (-C),
  xforward=False (-F), pix=True (-P: a CISCO PIX mangled greeting), lmtp=True (-L)
  hostname (-h), command_timeout (-t), max_sessions (-n: exit after N sessions)
  counters=True (-c: counters on stdout, see `output()`)
  capture=True (-d): keep every message; read them back with `messages()`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_binary
from tests.servers.lifecycle import StartStop

STARTUP_TIMEOUT = 5.0


class SmtpSinkError(RuntimeError):
    """smtp-sink did not start (bad option, cannot bind...); carries its output."""


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """One message captured by smtp-sink (-d), from its dump file."""

    client_addr: str
    helo: str | None
    mail_args: str  # e.g. "<probe@example.org> SIZE=123"
    rcpt_args: tuple[str, ...]
    content: bytes  # header and body as received, dot-stuffing removed, LF line ends (smtp-sink's dump)


def _commands(flag: str, commands: Iterable[str]) -> list[str]:
    names = [c.upper() for c in commands]
    return [flag, ",".join(names)] if names else []


class SmtpSink(StartStop):
    """A running /usr/sbin/smtp-sink on 127.0.0.1 (or `host`, e.g. "::1"), port 0."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        hostname: str = "sink.test",
        soft_reject: Iterable[str] = (),
        hard_reject: Iterable[str] = (),
        disconnect: Iterable[str] = (),
        shutdown: Iterable[str] = (),
        soft_bounce_reply: str | None = None,
        hard_bounce_reply: str | None = None,
        data_delay: int | None = None,
        command_delays: Mapping[str, int] | None = None,
        abort_after_data: int | None = None,
        pipelining: bool = True,
        esmtp: bool = True,
        enhanced_status_codes: bool = True,
        eightbitmime: bool = True,
        auth: bool = True,
        dsn: bool = True,
        xclient: bool = True,
        xforward: bool = True,
        pix: bool = False,
        lmtp: bool = False,
        counters: bool = False,
        capture: bool = False,
        command_timeout: int = 30,
        max_sessions: int | None = None,
        backlog: int = 128,
    ) -> None:
        self.host = host
        self.binary = require_binary("smtp-sink")
        args = ["-h", hostname, "-t", str(command_timeout)]
        args += _commands("-r", soft_reject)
        args += _commands("-f", hard_reject)
        args += _commands("-q", disconnect)
        args += _commands("-Q", shutdown)
        if soft_bounce_reply is not None:
            args += ["-b", soft_bounce_reply]
        if hard_bounce_reply is not None:
            args += ["-B", hard_bounce_reply]
        if data_delay is not None:
            args += ["-w", str(data_delay)]
        for command, delay in (command_delays or {}).items():
            args += ["-W", f"{command.upper()}:{delay}"]
        if abort_after_data is not None:
            args += ["-A", str(abort_after_data)]
        for enabled, flag in (
            (not pipelining, "-p"),
            (not esmtp, "-e"),
            (not enhanced_status_codes, "-E"),
            (not eightbitmime, "-8"),
            (not auth, "-a"),
            (not dsn, "-N"),
            (not xclient, "-C"),
            (not xforward, "-F"),
            (pix, "-P"),
            (lmtp, "-L"),
            (counters, "-c"),
        ):
            if enabled:
                args.append(flag)
        if max_sessions is not None:
            args += ["-n", str(max_sessions)]
        self._options = args
        self._capture = capture
        self._backlog = backlog
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def command(self) -> list[str]:
        """The full command line (set once started)."""
        return list(self._process.args) if self._process else []  # type: ignore[arg-type]

    def start(self) -> SmtpSink:
        self._workdir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        args = [self.binary, *self._options]
        if os.geteuid() == 0:
            # smtp-sink refuses to keep root privileges; it drops them after binding.
            nobody = pwd.getpwnam("nobody")
            args += ["-u", "nobody"]
            if self._capture:
                self._workdir.chmod(0o711)  # let nobody reach dump/, and nothing else
                (self._workdir / "dump").mkdir()
                os.chown(self._workdir / "dump", nobody.pw_uid, nobody.pw_gid)
        elif self._capture:
            (self._workdir / "dump").mkdir()
        if self._capture:
            args += ["-d", str(self._workdir / "dump" / "msg.")]
        listen = f"[{self.host}]:0" if ":" in self.host else f"{self.host}:0"
        args += [listen, str(self._backlog)]
        log = (self._workdir / "output.log").open("wb")
        try:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True
            )
        finally:
            log.close()
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> int:
        assert self._process is not None
        table = "/proc/{}/net/tcp6" if ":" in self.host else "/proc/{}/net/tcp"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SmtpSinkError(f"smtp-sink exited with {self._process.returncode}: {self.output()}")
            port = _listening_port(self._process.pid, table.format(self._process.pid))
            if port is not None:
                return port
            time.sleep(0.005)
        raise SmtpSinkError(f"smtp-sink did not listen within {STARTUP_TIMEOUT}s: {self.output()}")

    def stop(self) -> None:
        """SIGTERM, reap (SIGKILL after 5 s), remove the work directory. Idempotent."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._workdir is not None:
            self._last_output = self.output()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def output(self) -> str:
        """What smtp-sink printed (counters with -c, fatal errors)."""
        if self._workdir is None:
            return getattr(self, "_last_output", "")
        try:
            return (self._workdir / "output.log").read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def messages(self) -> list[SinkMessage]:
        """Messages captured so far (capture=True), oldest first.

        smtp-sink opens a dump file when a transaction starts, so a message is complete
        only once the client has read the reply to its final dot.
        """
        if not self._capture or self._workdir is None:
            raise RuntimeError("messages() needs capture=True and a running smtp-sink")
        files = sorted((self._workdir / "dump").glob("msg.*"), key=lambda p: p.stat().st_mtime_ns)
        return [_parse_dump(p.read_bytes()) for p in files]

    def wait_messages(self, count: int = 1, timeout: float = 5.0) -> list[SinkMessage]:
        """Poll until at least `count` messages are captured (or `timeout`); returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)


def _listening_port(pid: int, table: str) -> int | None:
    """The port of the listening TCP socket that process `pid` holds, if any yet."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        lines = Path(table).read_text().splitlines()[1:]
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        fields = line.split()
        if fields[3] == "0A" and f"socket:[{fields[9]}]" in inodes:  # 0A: TCP_LISTEN
            return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def _parse_dump(data: bytes) -> SinkMessage:
    """smtp-sink's dump: X-* records, a 3-line Received header, the message, an empty line."""
    lines = data.split(b"\n")
    fields: dict[bytes, list[bytes]] = {}
    index = 0
    while index < len(lines) and not lines[index].startswith(b"Received:"):
        name, _, value = lines[index].partition(b": ")
        fields.setdefault(name, []).append(value)
        index += 1
    body = b"\n".join(lines[index + 3 :])
    if body.endswith(b"\n\n"):
        body = body[:-1]

    def one(name: bytes) -> str | None:
        values = fields.get(name)
        return values[0].decode("utf-8", "replace") if values else None

    return SinkMessage(
        client_addr=one(b"X-Client-Addr") or "",
        helo=one(b"X-Helo-Args"),
        mail_args=one(b"X-Mail-Args") or "",
        rcpt_args=tuple(v.decode("utf-8", "replace") for v in fields.get(b"X-Rcpt-Args", [])),
        content=body,
    )
