"""A real DNSSEC world on loopback: zones signed with ldns-signzone, served by a real `nsd`, and
resolved by a real validating `unbound` that holds the test root's trust anchor.

    with DnssecLab() as lab:                                  # nsd + validating unbound started
        lab.add("example.test", "MX", "10 mx")                  # relative names: to the zone
        lab.add("mx.example.test", "A", "127.0.0.1")
        lab.tlsa("_25._tcp.mx.example.test", 3, 1, 1, sha256_of_spki)
        lab.txt("_mta-sts.example.test", "v=STSv1; id=1")       # quoted for you
        lab.ptr("127.0.0.1", "mx.example.test")                 # in the signed in-addr.arpa. zone
        lab.zone("zen.test.", signed=False).add("2.0.0.127.zen.test", "A", "127.0.0.2")
        lab.corrupt("bad.example.test", "A")                    # that RRset's RRSIG is bogus
        lab.remove("mx.example.test", "A")                      # (or only one type: rdtype)
        lab.reload()                                           # re-sign, reload nsd, flush caches
        answer = lab.resolver.query("mx.example.test", "A")    # DO set: answer.flags & AD
        ede_codes(answer)                                      # [6] when bogus, [7] when expired
        config_value = lab.resolver.nameserver                 # "127.0.0.1:PORT" for `dns:`
        plain = lab.start_resolver(trust_anchor=False)         # a resolver that does not validate

The zones form one tree under a signed test root ".", whose DS is unbound's only trust anchor (so
the root's DNSKEY answers with AD=1, as a validating resolver's does on the internet). Every other
zone is delegated from that root: with a DS when it is signed (a chain of trust: `secure`), without
one when it is not (a provably insecure delegation: AD=0). Default zones: "example.test." (signed,
NSEC), "insecure.test." (unsigned), "in-addr.arpa." and "ip6.arpa." (signed: PTR for any address).
`lab.zone(origin, signed=, nsec3=, expired=)` makes more (a DNSBL zone, an NSEC3 zone, a zone
whose signatures expired yesterday). Names outside every
zone but "." land in the root zone. `add` and `corrupt` before `start()` or followed by `reload()`.

Unbound never leaves loopback: a stub zone per served zone points at nsd, there are no root hints
in use and no automatic trust anchor. All files (config, keys, zones, pid files, control sockets)
live in a private directory; both daemons run in the foreground as the invoking user, so this
works as root (CI) and as an ordinary user.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename

from tests.helpers import require_binary
from tests.servers.lifecycle import StartStop

HOST = "127.0.0.1"
TTL = 60
START_ATTEMPTS = 10  # a daemon that loses the race for its port is restarted on another one
READY_TIMEOUT = 10.0
# Unbound answers these itself (RFC 6761/6303 and friends) unless told `nodefault`: without this,
# "test." and most reverse zones would never reach nsd.
UNBOUND_DEFAULT_ZONES = (
    ["localhost.", "test.", "invalid.", "onion.", "home.arpa.", "127.in-addr.arpa."]
    + ["10.in-addr.arpa.", "168.192.in-addr.arpa.", "0.in-addr.arpa.", "254.169.in-addr.arpa."]
    + ["2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa."]
    + ["255.255.255.255.in-addr.arpa.", "d.f.ip6.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa."]
    + [f"{n}.172.in-addr.arpa." for n in range(16, 32)]
    + [f"{n}.100.in-addr.arpa." for n in range(64, 128)]
    + [f"{c}.e.f.ip6.arpa." for c in "89ab"]
    + ["1." + "0." * 31 + "ip6.arpa.", "0." * 32 + "ip6.arpa."]
)


def absolute(name: str) -> str:
    """`name` in lower case with its trailing dot ("Example.test" -> "example.test.")."""
    return dns.name.from_text(name).to_text().lower()


def ede_codes(message: dns.message.Message) -> list[int]:
    """The extended DNS error codes (RFC 8914) of an answer, e.g. [6] for DNSSEC Bogus."""
    return [int(o.code) for o in message.options if isinstance(o, dns.edns.EDEOption)]


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # absolute, lower case
    rdtype: str
    rdata: str
    ttl: int = TTL

    def line(self) -> str:
        return f"{self.name}\t{self.ttl}\tIN\t{self.rdtype}\t{self.rdata}"


@dataclass(slots=True)
class Zone:
    """One zone's records; the lab adds its SOA, NS, DNSKEY, signatures and delegations."""

    origin: str
    signed: bool = True
    nsec3: bool = False
    expired: bool = False  # signatures that ended yesterday: bogus, EDE 7 (Signature Expired)
    records: list[Record] = field(default_factory=list)
    corrupted: set[tuple[str, str]] = field(default_factory=set)
    key: str | None = None  # ldns key base name, made once per zone
    ds: str = ""  # the key's DS record text (owner, class, type, rdata)
    serial: int = 0
    served: str = ""  # the zone file last signed, serial aside: unchanged zones are not re-signed

    def contains(self, name: str) -> bool:
        return dns.name.from_text(name).is_subdomain(dns.name.from_text(self.origin))

    def add(self, name: str, rdtype: str, rdata: str, ttl: int = TTL, *, checked: bool = True) -> Self:
        """`checked`: parsed here, so a typo fails in the test's own line rather than as a zone nsd
        rejects (relative names in the data are relative to the zone, as in a zone file). A test
        serving data dnspython refuses on purpose (a TLSA digest of the wrong length, which nsd
        and ldns take) passes False, and the text goes into the zone file as it is."""
        name = absolute(name)
        if not self.contains(name):
            raise ValueError(f"{name} is not inside zone {self.origin}")
        if checked:
            origin = dns.name.from_text(self.origin)
            rdata = dns.rdata.from_text(
                dns.rdataclass.IN, rdtype, rdata, origin=origin, relativize=False
            ).to_text()
        self.records.append(Record(name, rdtype.upper(), rdata, ttl))
        return self

    def remove(self, name: str, rdtype: str | None = None) -> Self:
        """Drop the records of `name` (only those of `rdtype` when given)."""
        name = absolute(name)
        kept = [r for r in self.records if r.name != name or (rdtype and r.rdtype != rdtype.upper())]
        self.records[:] = kept
        return self

    def corrupt(self, name: str, rdtype: str) -> Self:
        """Make the RRSIG over (`name`, `rdtype`) fail to verify, so the answer is bogus."""
        self.corrupted.add((absolute(name), rdtype.upper()))
        return self


@dataclass(slots=True)
class Resolver:
    """A running unbound: `nameserver` is "HOST:PORT" for a module's `dns.nameservers`."""

    host: str
    port: int
    trust_anchor: bool
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def query(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 5.0
    ) -> dns.message.Message:
        """A recursive query with the DO bit set (EDNS, 1232 bytes), as the exporter sends it."""
        query = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0, payload=1232)
        if tcp:
            return dns.query.tcp(query, self.host, timeout=timeout, port=self.port)
        return dns.query.udp_with_fallback(query, self.host, timeout=timeout, port=self.port)[0]

    def flush(self) -> None:
        """Drop every cached answer, key, negative and bogus entry (all lie at or below ".")."""
        control(self.config, "flush_zone", ".")

    def restart(self) -> None:
        """Reread the config (new stub zones, nsd's new port) with empty caches."""
        control(self.config, "reload")
        if not wait_until_answers(self.host, self.port, "version.server.", "TXT", rdclass="CH"):
            raise RuntimeError(f"unbound did not come back after reload ({self.config})")


class DnssecLab(StartStop):
    """nsd authoritative for the test zones plus a validating unbound (`resolver`); see above."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="dnssec-")) if workdir is None else workdir
        self.zones: dict[str, Zone] = {}
        self.nsd_port = 0
        self._nsd: subprocess.Popen[bytes] | None = None
        self._nsd_zones: tuple[str, ...] = ()
        self.resolvers: list[Resolver] = []
        self._serial = int(time.time())  # the next SOA serial: every change gets a new one
        for origin, signed in ((".", True), ("example.test.", True), ("insecure.test.", False)):
            self.zone(origin, signed=signed)
        self.zone("in-addr.arpa.")
        self.zone("ip6.arpa.")

    # -- zone data ------------------------------------------------------------------------------

    def zone(self, origin: str, *, signed: bool = True, nsec3: bool = False, expired: bool = False) -> Zone:
        """The zone `origin`, created (delegated from the root) the first time it is named; the
        options apply only then (the default zones are made by `__init__`)."""
        origin = absolute(origin)
        if origin not in self.zones:
            self.zones[origin] = Zone(origin, signed=signed, nsec3=nsec3, expired=expired)
        return self.zones[origin]

    def zone_of(self, name: str) -> Zone:
        """The deepest zone containing `name`."""
        return max((z for z in self.zones.values() if z.contains(name)), key=lambda z: len(z.origin))

    def add(self, name: str, rdtype: str, rdata: str, ttl: int = TTL, *, checked: bool = True) -> Self:
        self.zone_of(name).add(name, rdtype, rdata, ttl, checked=checked)
        return self

    def remove(self, name: str, rdtype: str | None = None) -> Self:
        self.zone_of(name).remove(name, rdtype)
        return self

    def corrupt(self, name: str, rdtype: str) -> Self:
        self.zone_of(name).corrupt(name, rdtype)
        return self

    def txt(self, name: str, *strings: str, ttl: int = TTL) -> Self:
        """One TXT record made of `strings` (each at most 255 bytes), quoted for you."""
        quoted = " ".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in strings)
        return self.add(name, "TXT", quoted, ttl)

    def tlsa(
        self,
        name: str,
        usage: int,
        selector: int,
        matching_type: int,
        data: bytes,
        ttl: int = TTL,
        *,
        checked: bool = True,
    ) -> Self:
        """A TLSA record; `data` is the certificate association data (DER or its digest)."""
        return self.add(
            name, "TLSA", f"{usage} {selector} {matching_type} {data.hex()}", ttl, checked=checked
        )

    def ptr(self, address: str, target: str, ttl: int = TTL) -> Self:
        """A PTR for an IPv4 or IPv6 address (in the signed in-addr.arpa./ip6.arpa. zones)."""
        return self.add(dns.reversename.from_address(address).to_text(), "PTR", absolute(target), ttl)

    @property
    def trust_anchor(self) -> str:
        """The root's DS record: the validating resolvers' only trust anchor."""
        return self.zones["."].ds

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self._write_zones()
            self._start_nsd()
            self.resolver = self.start_resolver(trust_anchor=True)
        except BaseException:
            self.stop()
            raise
        return self

    def start_resolver(self, *, trust_anchor: bool = True) -> Resolver:
        """Another unbound on its own port; without the trust anchor it does not validate at all."""
        index = len(self.resolvers)
        config = self.dir / f"unbound{index}.conf"
        resolver = Resolver(HOST, 0, trust_anchor, config)
        for _attempt in range(START_ATTEMPTS):
            resolver.port = unused_port()
            config.write_text(self._unbound_config(resolver, index))
            resolver.process = spawn([require_binary("unbound"), "-d", "-c", str(config)])
            if wait_until_answers(
                HOST, resolver.port, "version.server.", "TXT", rdclass="CH", process=resolver.process
            ):
                self.resolvers.append(resolver)
                return resolver
            stop_process(resolver.process)
        raise RuntimeError(
            f"unbound did not start in {START_ATTEMPTS} attempts: {self._log('unbound', index)}"
        )

    def reload(self) -> None:
        """Apply every change since the last start/reload: re-sign, reload nsd, flush resolvers."""
        changed = self._write_zones()
        if tuple(self.zones) != self._nsd_zones:  # nsd learns new zones only from its config
            stop_process(self._nsd)
            self._start_nsd(keep_port=True)
        elif changed:
            control(self.dir / "nsd.conf", "reload", binary="nsd-control")
            for zone in changed:
                self._wait_for_serial(zone)
        for index, resolver in enumerate(self.resolvers):
            config = self._unbound_config(resolver, index)
            if config != resolver.config.read_text():
                resolver.config.write_text(config)
                resolver.restart()
            else:
                resolver.flush()

    def stop(self) -> None:
        for resolver in self.resolvers:
            stop_process(resolver.process)
        self.resolvers.clear()
        stop_process(self._nsd)
        self._nsd = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- internals ----------------------------------------------------------------------------------

    def _write_zones(self) -> list[Zone]:
        """Write (and sign) the zones whose content changed; those zones."""
        for zone in self.zones.values():
            if zone.signed and zone.key is None:
                zone.key = self._keygen(zone.origin)
                zone.ds = (self.dir / f"{zone.key}.ds").read_text().split(";")[0].strip()
        return [zone for zone in self.zones.values() if self._write_zone(zone)]

    def _keygen(self, origin: str) -> str:
        # One combined signing key (SEP flag) per zone; ECDSA P-256 keeps this to milliseconds.
        keygen = [require_binary("ldns-keygen"), "-a", "ECDSAP256SHA256", "-k", "-r", "/dev/urandom", origin]
        return run(keygen, self.dir).strip()

    def _write_zone(self, zone: Zone) -> bool:
        lines = [Record(zone.origin, "NS", "ns.").line()]
        if zone.origin == ".":
            lines.append(Record("ns.", "A", HOST).line())
            for child in self.zones.values():
                if child.origin != ".":
                    lines.append(Record(child.origin, "NS", "ns.").line())
                    if child.signed:
                        lines.append(child.ds.replace("\tIN\t", f"\t{TTL}\tIN\t", 1))
        lines += [r.line() for r in zone.records]
        content = "\n".join([*lines, repr(sorted(zone.corrupted))])
        if content == zone.served:
            return False
        zone.serial = self._serial
        self._serial += 1
        soa = f"ns. hostmaster.{zone.origin.lstrip('.')} {zone.serial} 3600 600 86400 {TTL}"
        source = self.dir / f"{file_stem(zone.origin)}.zone"
        source.write_text("\n".join([Record(zone.origin, "SOA", soa).line(), *lines]) + "\n")
        served = self.dir / f"{file_stem(zone.origin)}.served"
        if not zone.signed:
            if zone.corrupted:
                raise ValueError(f"zone {zone.origin} is not signed: no signature to corrupt")
            shutil.copyfile(source, served)
            zone.served = content
            return True
        assert zone.key is not None
        sign = [require_binary("ldns-signzone"), "-o", zone.origin, "-f", str(served)]
        if zone.nsec3:
            sign += ["-n", "-t", "0"]  # RFC 9276: no extra iterations, no salt
        if zone.expired:
            now = int(time.time())
            sign += ["-i", str(now - 2 * 86400), "-e", str(now - 86400)]
        run([*sign, str(source), zone.key], self.dir)
        if zone.corrupted:
            served.write_text(corrupt_signatures(served.read_text(), zone.corrupted))
        zone.served = content
        return True

    def _start_nsd(self, *, keep_port: bool = False) -> None:
        for attempt in range(START_ATTEMPTS):
            if not (keep_port and attempt == 0):
                self.nsd_port = unused_port()
            (self.dir / "nsd.conf").write_text(self._nsd_config())
            self._nsd = spawn([require_binary("nsd"), "-d", "-c", str(self.dir / "nsd.conf")])
            if wait_until_answers(HOST, self.nsd_port, ".", "SOA", process=self._nsd, recurse=False):
                self._nsd_zones = tuple(self.zones)
                return
            stop_process(self._nsd)
        raise RuntimeError(f"nsd did not start in {START_ATTEMPTS} attempts: {self._log('nsd')}")

    def _wait_for_serial(self, zone: Zone) -> None:
        """nsd-control reload returns before the new zones are served: wait for the new serial."""
        deadline = time.monotonic() + READY_TIMEOUT
        query = dns.message.make_query(zone.origin, "SOA")
        query.flags &= ~dns.flags.RD
        while time.monotonic() < deadline:
            answer = dns.query.udp(query, HOST, timeout=1.0, port=self.nsd_port)
            if answer.answer and answer.answer[0][0].serial == zone.serial:
                return
            time.sleep(0.01)
        raise RuntimeError(f"nsd did not serve {zone.origin} serial {zone.serial}: {self._log('nsd')}")

    def _nsd_config(self) -> str:
        d = self.dir
        zones = "".join(
            f'zone:\n\tname: "{z.origin}"\n\tzonefile: "{d / file_stem(z.origin)}.served"\n'
            for z in self.zones.values()
        )
        return (
            f'server:\n\tip-address: {HOST}@{self.nsd_port}\n\tdo-ip6: no\n\tusername: ""\n\tchroot: ""\n'
            f'\tzonesdir: "{d}"\n\tdatabase: ""\n\tzonelistfile: "{d}/zone.list"\n\txfrdfile: "{d}/xfrd.state"\n'
            f'\txfrdir: "{d}"\n\tpidfile: "{d}/nsd.pid"\n\tlogfile: "{d}/nsd.log"\n\tserver-count: 1\n'
            f"\treuseport: no\n\tverbosity: 1\n\tzonefiles-check: yes\n"
            f'remote-control:\n\tcontrol-enable: yes\n\tcontrol-interface: "{d}/nsd.ctl"\n' + zones
        )

    def _unbound_config(self, resolver: Resolver, index: int) -> str:
        d = self.dir
        modules = "validator iterator" if resolver.trust_anchor else "iterator"
        # do-not-query-localhost: nsd is on loopback. ede: RFC 8914 codes on SERVFAIL (6 DNSSEC
        # Bogus, 7 Signature Expired, ...), with the reason text at val-log-level 2.
        lines = (
            f'server:\ninterface: {HOST}\nport: {resolver.port}\ndo-ip6: no\nusername: ""\nchroot: ""\n'
            f'directory: "{d}"\npidfile: "{d}/unbound{index}.pid"\nlogfile: "{d}/unbound{index}.log"\n'
            "use-syslog: no\nnum-threads: 1\noutgoing-range: 64\nso-reuseport: no\nprefetch: no\n"
            "do-not-query-localhost: no\nqname-minimisation: no\ntrust-anchor-signaling: no\n"
            f'root-key-sentinel: no\nede: yes\nval-log-level: 2\nverbosity: 1\nmodule-config: "{modules}"'
        ).split("\n")
        if resolver.trust_anchor:
            lines.append(f'trust-anchor: "{self.trust_anchor}"')
        lines += [f'local-zone: "{z}" nodefault' for z in UNBOUND_DEFAULT_ZONES]
        lines += ["remote-control:", "control-enable: yes", f'control-interface: "{d}/unbound{index}.ctl"']
        for zone in self.zones:
            lines += ["stub-zone:", f'name: "{zone}"', f"stub-addr: {HOST}@{self.nsd_port}", "stub-prime: no"]
        return "\n".join(lines) + "\n"

    def _log(self, daemon: str, index: int | None = None) -> str:
        path = self.dir / f"{daemon}{'' if index is None else index}.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"


def file_stem(origin: str) -> str:
    return "root" if origin == "." else origin.rstrip(".")


def corrupt_signatures(text: str, targets: set[tuple[str, str]]) -> str:
    """Flip bits in the RRSIG signatures covering `targets` (ldns writes one RR per line)."""
    out = []
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[3] == "RRSIG" and (fields[0].lower(), fields[4]) in targets:
            signature = bytearray(base64.b64decode("".join(fields[12:])))
            signature[len(signature) // 2] ^= 0xFF
            line = "\t".join([*fields[:12], base64.b64encode(bytes(signature)).decode()])
            found.add((fields[0].lower(), fields[4]))
        out.append(line)
    if missing := targets - found:
        raise ValueError(f"no signature to corrupt for {sorted(missing)}")
    return "\n".join(out) + "\n"


def unused_port() -> int:
    """A port free for UDP and TCP right now. The daemon binds it later: a lost race shows as a
    daemon that does not answer, and the caller retries on another port."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with contextlib.suppress(OSError):
                tcp.bind((HOST, port))
                return port


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def control(config: Path, *command: str, binary: str = "unbound-control") -> None:
    run([require_binary(binary), "-c", str(config), *command], config.parent)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_answers(
    host: str,
    port: int,
    name: str,
    rdtype: str,
    *,
    rdclass: str = "IN",
    process: subprocess.Popen[bytes] | None = None,
    recurse: bool = True,
) -> bool:
    """Poll until the server answers; False when `process` exits first (e.g. its port was taken)."""
    query = dns.message.make_query(name, rdtype, rdclass=dns.rdataclass.from_text(rdclass))
    if not recurse:
        query.flags &= ~dns.flags.RD
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(OSError, dns.exception.Timeout):
            dns.query.udp(query, host, timeout=0.05, port=port)
            return True
    return False
