"""A real Postfix (Debian package postfix): master, smtpd and the whole queue, run from a private
configuration and queue directory under tmp, listening on a loopback port the kernel chose.

    with PostfixSmtpd(tls=ca.server_cert) as postfix:          # STARTTLS offered ("may")
        probe(postfix.target)

    PostfixSmtpd(main_cf={"relayhost": "[127.0.0.1]:2424"},    # main.cf settings, as postconf -e
                 smtpd_options={"smtpd_tls_security_level": "encrypt"})  # -o on the smtpd line

Nothing outside the temporary directory is touched: `master -c DIR -d` reads DIR/main.cf and
DIR/master.cf (written here), the queue and data directories are DIR/queue and DIR/data, logging
goes to DIR/maillog through postlogd (no syslog), no service runs chrooted, local and outbound
delivery are disabled (`error:` transports; override them to relay, e.g. to an LMTP server), and
the only inet listener is the smtpd on `host`, port 0. The port the kernel gave it is read from
/proc, as for smtp-sink (tests/servers/smtp_sink.py): no port is chosen in advance.

Postfix's master must run as root (it starts the daemons and they drop to `mail_owner`, the
`postfix` user Debian's package creates); the tests run as root in CI. `log()` and `wait_log()`
read the mail log, e.g. to see a message leave the queue.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from tests.helpers import require_binary, skip_or_fail
from tests.servers.lifecycle import StartStop
from tests.servers.smtp_sink import _listening_port
from tests.servers.tls import ServerCert

STARTUP_TIMEOUT = 10.0
MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"

# The queue's directories and their owners and modes, as Postfix's own postfix-files sets them.
_QUEUE_DIRS: tuple[tuple[str, str, str, int], ...] = (
    ("active", MAIL_OWNER, "root", 0o700),
    ("bounce", MAIL_OWNER, "root", 0o700),
    ("corrupt", MAIL_OWNER, "root", 0o700),
    ("defer", MAIL_OWNER, "root", 0o700),
    ("deferred", MAIL_OWNER, "root", 0o700),
    ("flush", MAIL_OWNER, "root", 0o700),
    ("hold", MAIL_OWNER, "root", 0o700),
    ("incoming", MAIL_OWNER, "root", 0o700),
    ("private", MAIL_OWNER, "root", 0o700),
    ("saved", MAIL_OWNER, "root", 0o700),
    ("trace", MAIL_OWNER, "root", 0o700),
    ("maildrop", MAIL_OWNER, SETGID_GROUP, 0o1730),
    ("public", MAIL_OWNER, SETGID_GROUP, 0o2710),
    ("pid", "root", "root", 0o755),
)

# The internal services of Debian's default master.cf (none chrooted: a chroot would need copies
# of /etc files in the queue directory). The smtpd inet line is added by `_master_cf`.
_INTERNAL_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """Postfix did not start (bad setting, cannot bind...); carries its log."""


class PostfixSmtpd(StartStop):
    """A running Postfix whose smtpd listens on `host` (127.0.0.1 or ::1), port 0.

    `tls`: a certificate (tests/servers/tls.py) to offer STARTTLS with (smtpd_tls_security_level
    "may"); None: no STARTTLS. `main_cf`: main.cf settings, applied after the defaults here (so
    they override them). `smtpd_options`: `-o name=value` options of the smtpd service only.
    `extra_services`: further master.cf lines (e.g. a second listener), written as given.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        hostname: str = "mail.test",
        tls: ServerCert | None = None,
        main_cf: Mapping[str, str] | None = None,
        smtpd_options: Mapping[str, str] | None = None,
        extra_services: str = "",
    ) -> None:
        self.host = host
        self.hostname = hostname
        self.tls = tls
        self._main_cf_overrides = dict(main_cf or {})
        self._smtpd_options = dict(smtpd_options or {})
        self._extra_services = extra_services
        self.master_binary = require_binary("master")
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._last_log = ""
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def config_directory(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("Postfix is not running")
        return self._workdir / "etc"

    @property
    def queue_directory(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("Postfix is not running")
        return self._workdir / "queue"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _main_cf(self, work: Path) -> dict[str, str]:
        """The main.cf settings: these defaults, then the caller's `main_cf`."""
        loopback = "[::1]/128" if ":" in self.host else "127.0.0.0/8"
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(work / "etc"),
            "queue_directory": str(work / "queue"),
            "data_directory": str(work / "data"),
            "mail_owner": MAIL_OWNER,
            "setgid_group": SETGID_GROUP,
            "myhostname": self.hostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv6" if ":" in self.host else "ipv4",
            "mynetworks": loopback,
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            # Nothing leaves the test: no mailbox under /var/mail, no mail to the internet.
            "local_transport": "error:local delivery is disabled in tests",
            "default_transport": "error:outbound delivery is disabled in tests",
            "relay_transport": "error:outbound delivery is disabled in tests",
            "biff": "no",
            "smtputf8_enable": "yes",
            "maillog_file": str(work / "maillog"),
            "maillog_file_prefixes": str(work),
            "smtpd_banner": "$myhostname ESMTP Postfix",
        }
        if self.tls is not None:
            settings |= {
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": self.tls.cert_file,
                "smtpd_tls_key_file": self.tls.key_file,
                "smtpd_tls_loglevel": "1",
            }
        return settings | self._main_cf_overrides

    def _master_cf(self) -> str:
        listen = f"[{self.host}]:0" if ":" in self.host else f"{self.host}:0"
        line = f"{listen} inet n - n - - smtpd\n"
        for name, value in self._smtpd_options.items():
            line += f"  -o {name}={value}\n"
        return line + _INTERNAL_SERVICES + self._extra_services

    def start(self) -> PostfixSmtpd:
        if os.geteuid() != 0:
            skip_or_fail("Postfix's master must run as root (it runs in CI as root)")
        try:
            owner = pwd.getpwnam(MAIL_OWNER)
            grp.getgrnam(SETGID_GROUP)
        except KeyError:
            skip_or_fail(f"user {MAIL_OWNER!r} or group {SETGID_GROUP!r} missing (Debian package 'postfix')")
        self._workdir = Path(tempfile.mkdtemp(prefix="postfix-"))
        try:
            self._prepare(owner.pw_uid)
            log = (self._workdir / "master.out").open("wb")
            try:
                # -d: stay in the foreground, so this process is the master and stop() signals it.
                self._process = subprocess.Popen(
                    [self.master_binary, "-d", "-c", str(self.config_directory)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    # Its own process group, so stop() ends the master and every daemon at once.
                    start_new_session=True,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(self.config_directory)},
                )
            finally:
                log.close()
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self, owner_uid: int) -> None:
        assert self._workdir is not None
        # mkdtemp made it 0700: the daemons, running as `postfix`, must reach the queue below it.
        self._workdir.chmod(0o755)
        etc = self._workdir / "etc"
        etc.mkdir()
        (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self._main_cf(self._workdir).items()))
        (etc / "master.cf").write_text(self._master_cf())
        # Postfix re-reads a configuration file changed within the last second until it has
        # "settled" (300 ms naps, ~3 s per start): files dated a minute ago are read at once.
        settled = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(etc / name, (settled, settled))
        queue = self._workdir / "queue"
        queue.mkdir(mode=0o755)
        for name, user, group, mode in _QUEUE_DIRS:
            path = queue / name
            path.mkdir()
            os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
            path.chmod(mode)
        data = self._workdir / "data"
        data.mkdir(mode=0o700)
        os.chown(data, owner_uid, -1)

    def _wait_listening(self) -> int:
        assert self._process is not None
        table = "/proc/{}/net/tcp6" if ":" in self.host else "/proc/{}/net/tcp"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                # Errors found before the mail log is open go to syslog only (there is none here),
                # so the message carries the configuration that was given.
                main_cf = (self.config_directory / "main.cf").read_text()
                raise PostfixError(
                    f"postfix master exited with {self._process.returncode}; log: {self.log()!r};"
                    f" main.cf:\n{main_cf}"
                )
            port = _listening_port(self._process.pid, table.format(self._process.pid))
            if port is not None and "daemon started" in self.log():
                return port
            time.sleep(0.01)
        raise PostfixError(f"postfix master did not listen within {STARTUP_TIMEOUT}s: {self.log()}")

    def stop(self) -> None:
        """End the master and its daemons, remove the directory. Idempotent.

        SIGKILL to the process group, as `postfix abort` does: a graceful SIGTERM makes the master
        signal its group and then sleep a whole second, and nothing here outlives the directory.
        """
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            _wait_group_gone(self._process.pid)
        if self._workdir is not None:
            self._last_log = self.log()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def held(self) -> list[str]:
        """The queue IDs of the messages on hold (a header_checks HOLD, `postsuper -h`): the
        file names of the queue's hold/ directory, which Postfix never hashes into subdirectories."""
        return sorted(path.name for path in (self.queue_directory / "hold").iterdir())

    def release(self, *queue_ids: str) -> None:
        """Deliver held messages now. A message released meanwhile is no error.

        `postsuper -H` moves them to the deferred queue, where they would wait for the next
        queue run (queue_run_delay, 5 minutes); `postqueue -i` asks for each one at once."""
        if not queue_ids:
            return
        config = ["-c", str(self.config_directory)]
        moved = [arg for queue_id in queue_ids for arg in ("-H", queue_id)]
        subprocess.run([require_binary("postsuper"), *config, *moved], check=True, capture_output=True)
        for queue_id in queue_ids:  # postqueue takes one -i
            subprocess.run(
                [require_binary("postqueue"), *config, "-i", queue_id], check=True, capture_output=True
            )

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def log(self) -> str:
        """The mail log so far (after stop(): as it was), then what master printed itself."""
        if self._workdir is None:
            return self._last_log
        parts = []
        for name in ("maillog", "master.out"):
            with contextlib.suppress(FileNotFoundError):
                parts.append((self._workdir / name).read_text("utf-8", "replace"))
        return "".join(parts)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Poll the mail log until the regular expression `pattern` matches; its match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log())
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{pattern!r} not in the Postfix log after {timeout}s:\n{self.log()}")
            time.sleep(0.02)


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Until every process of group `pgid` has exited: gone, or a zombie (its sockets and files
    closed) that init has not reaped yet."""
    deadline = time.monotonic() + timeout
    while _live_members(pgid):
        if time.monotonic() >= deadline:
            raise PostfixError(f"Postfix processes of group {pgid} still alive {timeout}s after SIGKILL")
        time.sleep(0.005)


def _live_members(pgid: int) -> list[int]:
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            live.append(int(entry))
    return live
