"""A path with a round trip, for timing effects that loopback's ~0 RTT hides (Nagle, delayed
ACKs). Only inside a private network namespace (`unshare --net`, as root): it rewires routing.

    with DelayLine(0.005):             # 5 ms each way: a 10 ms round trip
        connect from CLIENT to SERVER  # e.g. PostfixSmtpd(host=SERVER), probed as usual

CLIENT and SERVER are both addresses of this namespace, on the TUN device `tun0`. A rule sends
locally made packets for 10.13.0.0/24 to `tun0` instead of through `lo`; a child process (this
module run as a program) reads each one from the device, holds it `delay` seconds and writes it
back, and the kernel then receives it on `tun0` and delivers it locally. Every packet of both
directions crosses the line once, in order. (tc's netem would be simpler, but this project's VM
kernel is built without sch_netem.)
"""

from __future__ import annotations

import fcntl
import heapq
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import require_binary
from tests.servers.lifecycle import StartStop

CLIENT = "10.13.0.1"
SERVER = "10.13.0.2"
DEVICE = "tun0"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class DelayLine(StartStop):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._ip = require_binary("ip")
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> DelayLine:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.delay_line", str(self.delay), self._ip],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        ready = self._process.stdout.readline()
        if ready != "ready\n":
            self.stop()
            raise RuntimeError(f"the delay line did not start (exit {self._process.returncode})")
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def _wire(fd: int, ip: str) -> None:
    def run(*args: str) -> None:
        subprocess.run([ip, *args], check=True)

    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", DEVICE.encode(), _IFF_TUN | _IFF_NO_PI))
    for address in (CLIENT, SERVER):
        run("addr", "add", f"{address}/32", "dev", DEVICE)
    run("link", "set", DEVICE, "up")
    for scope in ("all", DEVICE):
        # A packet from one of our own addresses arriving on a device is a "martian" unless
        # accept_local allows it; the reverse-path filter would drop it as well.
        _sysctl(f"net.ipv4.conf.{scope}.accept_local", "1")
        _sysctl(f"net.ipv4.conf.{scope}.rp_filter", "0")
    # Locally made packets (iif lo) for the line's network go to the device; the `local` table,
    # which would send them through lo, is consulted after that rule, so that what comes back
    # from the device (iif tun0) is delivered.
    run("route", "add", "10.13.0.0/24", "dev", DEVICE, "src", CLIENT, "table", "100")
    run("rule", "add", "pref", "10", "iif", "lo", "to", "10.13.0.0/24", "lookup", "100")
    run("rule", "del", "pref", "0")
    run("rule", "add", "pref", "20", "lookup", "local")


def _forward(fd: int, delay: float) -> None:
    held: list[tuple[float, int, bytes]] = []
    count = 0
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([fd], [], [], timeout)
        if readable:
            count += 1  # arrival order breaks ties: the line never reorders
            heapq.heappush(held, (time.monotonic() + delay, count, os.read(fd, 65536)))
        now = time.monotonic()
        while held and held[0][0] <= now:
            os.write(fd, heapq.heappop(held)[2])


def main() -> None:
    delay, ip = float(sys.argv[1]), sys.argv[2]
    fd = os.open("/dev/net/tun", os.O_RDWR)
    _wire(fd, ip)
    print("ready", flush=True)
    _forward(fd, delay)


if __name__ == "__main__":
    main()
