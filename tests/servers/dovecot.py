"""A private Dovecot (Debian's dovecot-imapd and dovecot-lmtpd) on loopback: IMAP with STARTTLS,
IMAPS (implicit TLS) and LMTP on a unix socket, one passwd-file user with a Maildir.

    with Dovecot(ca.server_cert) as dovecot:
        dovecot.imap_port, dovecot.imaps_port      # 127.0.0.1
        dovecot.lmtp_socket                       # deliver with smtplib.LMTP(dovecot.lmtp_socket)
        dovecot.username, dovecot.password
        dovecot.messages()                        # the Maildir's messages (bytes), new and cur

Everything lives in a temporary directory of its own (config, base_dir, state, log, Maildir):
nothing in /etc/dovecot is read, nothing system-wide is touched. `idle=False` removes IDLE
from the capabilities Dovecot announces (the polling case); `uidplus=False` removes UIDPLUS.

Dovecot cannot bind port 0 and report the port, so the test binds both listening sockets itself
(port 0) and hands them over by systemd socket activation (LISTEN_FDS/LISTEN_PID, which Debian's
Dovecot supports and keeps across its re-exec): the config names the same ports, and Dovecot
takes the inherited sockets instead of binding. No port is chosen in advance, so nothing races.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import require_binary
from tests.servers.lifecycle import StartStop
from tests.servers.tls import ServerCert

STARTUP_TIMEOUT = 10.0
# Dovecot's default post-login capabilities (2.3), less the ones a test turns off.
_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE "
    "UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN "
    "CONTEXT=SEARCH LIST-STATUS BINARY MOVE LITERAL+ SPECIAL-USE"
)
# argv: the listening fds, then the command. Moves the fds to 3, 4, ... (SD_LISTEN_FDS_START).
_EXEC_ACTIVATED = """
import fcntl, os, sys
fds = [int(a) for a in sys.argv[1:] if a.isdigit()]
command = sys.argv[1 + len(fds):]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for n, fd in enumerate(moved):
    os.dup2(fd, 3 + n)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
os.execv(command[0], command)
"""


class DovecotError(RuntimeError):
    """Dovecot did not start; carries its log."""


class Dovecot(StartStop):
    """A running private Dovecot; see the module's docstring."""

    def __init__(
        self,
        cert: ServerCert,
        *,
        username: str = "probe-inbox@example.org",
        password: str = "imap secret 1",
        idle: bool = True,
        uidplus: bool = True,
    ) -> None:
        self.binary = require_binary("dovecot")
        for part in ("imap", "imap-login", "lmtp"):  # dovecot-core alone has neither server
            require_binary(f"/usr/lib/dovecot/{part}")
        self.cert = cert
        self.username = username
        self.password = password
        self.host = "127.0.0.1"
        self.imap_port = 0
        self.imaps_port = 0
        removed = set()
        if not idle:
            removed.add("IDLE")
        if not uidplus:
            removed.add("UIDPLUS")
        self.capabilities = " ".join(c for c in _CAPABILITIES.split() if c not in removed)
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir

    @property
    def lmtp_socket(self) -> str:
        return str(self.directory / "run" / "lmtp")

    @property
    def maildir(self) -> Path:
        return self.directory / "home" / "Maildir"

    def messages(self) -> list[bytes]:
        """Every message in the user's INBOX (new/ and cur/), as stored."""
        found: list[bytes] = []
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if folder.is_dir():
                found += [path.read_bytes() for path in sorted(folder.iterdir())]
        return found

    def log(self) -> str:
        path = self.directory / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _accounts(self) -> tuple[str, str, int, int]:
        """(internal user, login user, mail uid, mail gid): as root the package's own users and
        nobody for the mailbox (Dovecot refuses uid 0 for mail); otherwise the caller for all."""
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            return "dovecot", "dovenull", nobody.pw_uid, nobody.pw_gid
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid

    def _config(self, internal: str, login: str) -> str:
        d = self.directory
        internal_group = "dovecot" if internal == "dovecot" else internal
        return f"""\
instance_name = smtp-exporter-test-{d.name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap lmtp
listen = {self.host}
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
ssl = yes
ssl_cert = <{self.cert.cert_file}
ssl_key = <{self.cert.key_file}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
mail_location = maildir:~/Maildir
imap_capability = {self.capabilities}
lmtp_save_to_detail_mailbox = no
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""

    def start(self) -> Dovecot:
        self._dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
        # Dovecot's unprivileged processes (and the mailbox's owner) must reach their files.
        self._dir.chmod(0o755)
        internal, login, uid, gid = self._accounts()
        home = self._dir / "home"
        home.mkdir()
        os.chown(home, uid, gid)
        for sub in ("run", "state"):
            (self._dir / sub).mkdir()
        users = self._dir / "users"
        users.write_text(f"{self.username}:{{PLAIN}}{self.password}:{uid}:{gid}::{home}::\n")
        users.chmod(0o644)
        listeners = [_listen(self.host), _listen(self.host)]
        self.imap_port, self.imaps_port = (s.getsockname()[1] for s in listeners)
        config = self._dir / "dovecot.conf"
        config.write_text(self._config(internal, login))
        # A small Python wrapper moves the sockets to fds 3 and 4, names its own pid in LISTEN_PID
        # and execs Dovecot in the same process (Dovecot keeps both variables across its re-exec).
        fds = [s.fileno() for s in listeners]
        wrapper = [
            sys.executable,
            "-c",
            _EXEC_ACTIVATED,
            *map(str, fds),
            self.binary,
            "-F",
            "-c",
            str(config),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
        stderr = (self._dir / "stderr.log").open("wb")
        try:
            self._process = subprocess.Popen(
                wrapper,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=fds,
                env=env,
                start_new_session=True,
            )
        finally:
            stderr.close()
            for s in listeners:
                s.close()  # Dovecot holds its own copies now
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until IMAP answers its greeting and the LMTP socket exists."""
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DovecotError(f"dovecot exited with {self._process.returncode}: {self._output()}")
            if Path(self.lmtp_socket).exists():
                try:
                    with socket.create_connection((self.host, self.imap_port), timeout=1) as conn:
                        if conn.recv(256).startswith(b"* OK"):
                            return
                except OSError:
                    pass
            time.sleep(0.02)
        raise DovecotError(f"dovecot not ready after {STARTUP_TIMEOUT}s: {self._output()}")

    def _output(self) -> str:
        stderr = self.directory / "stderr.log"
        return (stderr.read_text(errors="replace") if stderr.exists() else "") + self.log()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _listen(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
