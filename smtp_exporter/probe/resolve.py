"""Name resolution for probes: A/AAAA and MX through dnspython's asyncio resolver.

No cache: the `resolve` phase measures the DNS a sending MTA would see, every probe. With the
system resolver, /etc/hosts is read first (dnspython does not), so `localhost` works as it
does for every other program on the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from smtp_exporter.config.schema import DNSConfig, IPProtocol
from smtp_exporter.model import FailureReason, MXInfo, Phase
from smtp_exporter.probe.errors import LOCAL_ERRNOS, LOCAL_ERROR, ProbeError
from smtp_exporter.targets import parse_nameserver

HOSTS_FILE = "/etc/hosts"
MAX_MX_HOSTS = 10
MAX_ADDRESSES = 16
# The families each ip_protocol looks up, the preferred first.
_FAMILIES = {
    IPProtocol.AUTO: (6, 4),
    IPProtocol.PREFER_IP4: (4, 6),
    IPProtocol.IP4: (4,),
    IPProtocol.IP6: (6,),
}


class Address(NamedTuple):
    ip: str
    family: int  # 4 or 6


class NullMXError(ProbeError):
    def __init__(self, domain: str):
        super().__init__(
            Phase.RESOLVE, FailureReason.NULL_MX, f"{domain} has a null MX (RFC 7505): it accepts no mail"
        )


class _HostsFile:
    """/etc/hosts, re-read when it changes."""

    def __init__(self, path: str = HOSTS_FILE) -> None:
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._entries: dict[str, list[Address]] = {}

    def lookup(self, name: str) -> list[Address]:
        try:
            st = os.stat(self._path)
        except OSError:
            return []
        if (st.st_mtime, st.st_size) != self._stamp:
            self._stamp = (st.st_mtime, st.st_size)
            self._entries = self._read()
        return self._entries.get(name, [])

    def _read(self) -> dict[str, list[Address]]:
        entries: dict[str, list[Address]] = {}
        try:
            with open(self._path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read(1 << 20).splitlines()
        except OSError:
            return entries
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) < 2:
                continue
            try:
                ip = ipaddress.ip_address(words[0].split("%", 1)[0])
            except ValueError:
                continue
            for name in words[1:]:
                known = entries.setdefault(name.lower().rstrip("."), [])
                address = Address(str(ip), ip.version)
                if address not in known:
                    known.append(address)
        return entries


_HOSTS = _HostsFile()


class DNSClient:
    def __init__(self, config: DNSConfig) -> None:
        self._config = config
        self._use_hosts = not config.nameservers
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._setup_error: str | None = None
        try:
            resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        except dns.resolver.NoResolverConfiguration as exc:
            self._setup_error = f"no system resolver configured: {exc}"
            return
        if config.nameservers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(entry)) for entry in config.nameservers
            ]
        resolver.timeout = config.timeout
        resolver.lifetime = config.timeout
        self._resolver = resolver

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        if self._resolver is None:
            raise ProbeError(Phase.RESOLVE, FailureReason.DNS_ERROR, self._setup_error or "no resolver")
        try:
            return await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            raise ProbeError(Phase.RESOLVE, FailureReason.DNS_NXDOMAIN, f"{name}: no such domain") from exc
        except dns.resolver.LifetimeTimeout as exc:
            message = f"{name} {rdtype.name}: no answer from DNS within {self._config.timeout:g}s"
            raise ProbeError(Phase.RESOLVE, FailureReason.DNS_ERROR, message) from exc
        except dns.resolver.NoNameservers as exc:
            for *_, error, _ in exc.kwargs.get("errors", ()):
                if isinstance(error, OSError) and error.errno in LOCAL_ERRNOS:  # e.g. no descriptor left
                    message = f"{LOCAL_ERROR}: DNS lookup of {name}: {os.strerror(error.errno)}"
                    raise ProbeError(Phase.RESOLVE, FailureReason.LOCAL_ERROR, message) from exc
            message = f"{name} {rdtype.name}: no nameserver answered (SERVFAIL or refused)"
            raise ProbeError(Phase.RESOLVE, FailureReason.DNS_ERROR, message) from exc
        except dns.exception.DNSException as exc:
            raise ProbeError(Phase.RESOLVE, FailureReason.DNS_ERROR, f"{name} {rdtype.name}: {exc}") from exc

    async def _family(self, name: str, family: int) -> list[Address]:
        rdtype = dns.rdatatype.AAAA if family == 6 else dns.rdatatype.A
        answer = await self._query(name, rdtype)
        if answer is None or answer.rrset is None:
            return []
        return [Address(rdata.address, family) for rdata in answer.rrset][:MAX_ADDRESSES]

    async def _families(self, name: str, families: tuple[int, ...]) -> list[Address]:
        """The addresses of each family, in the order given. The lookups are independent, as a
        sending MTA's are: an AAAA lookup that fails does not hide a good A answer. Only when no
        address was found does a failed lookup fail the probe, naming every lookup that failed."""
        answers = await asyncio.gather(*(self._family(name, f) for f in families), return_exceptions=True)
        found: list[Address] = []
        failures: list[ProbeError] = []
        for answer in answers:
            if isinstance(answer, ProbeError):
                failures.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                found += answer
        if found or not failures:
            return found
        if len(failures) == 1:
            raise failures[0]
        reasons = {failure.reason for failure in failures}
        reason = reasons.pop() if len(reasons) == 1 else FailureReason.DNS_ERROR
        raise ProbeError(Phase.RESOLVE, reason, "; ".join(failure.message for failure in failures))

    async def addresses(self, name: str, ip_protocol: IPProtocol) -> list[Address]:
        """The addresses to try, in order; raises ProbeError when there are none."""
        found: list[Address] = []
        if self._use_hosts:
            found = _HOSTS.lookup(name)
        if not found:
            found = await self._families(name, _FAMILIES[ip_protocol])
        elif ip_protocol is IPProtocol.IP4 or ip_protocol is IPProtocol.IP6:
            wanted = _FAMILIES[ip_protocol][0]
            found = [a for a in found if a.family == wanted]
        else:  # the preferred family first, as for names from DNS
            preferred = _FAMILIES[ip_protocol][0]
            found = sorted(found, key=lambda a: a.family != preferred)
        if not found:
            which = (
                "A"
                if ip_protocol is IPProtocol.IP4
                else "AAAA"
                if ip_protocol is IPProtocol.IP6
                else "A or AAAA"
            )
            raise ProbeError(Phase.RESOLVE, FailureReason.DNS_ERROR, f"{name}: no {which} records")
        return found

    async def mx_hosts(self, domain: str) -> list[MXInfo]:
        """The domain's MX hosts by preference; the domain itself when it has no MX (RFC 5321 5.1)."""
        answer = await self._query(domain, dns.rdatatype.MX)
        if answer is None or answer.rrset is None or len(answer.rrset) == 0:
            return [MXInfo(domain, 0)]
        # By preference; equal preferences stay in the order DNS returned them (a stable sort),
        # which is the server's order, or its rotation.
        records = sorted(
            (
                (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
                for rdata in answer.rrset
            ),
            key=lambda record: record[0],
        )
        if any(host in ("", ".") for _, host in records):
            if len(records) == 1:
                raise NullMXError(domain)
            records = [(p, h) for p, h in records if h not in ("", ".")]
        return [MXInfo(host, preference) for preference, host in records[:MAX_MX_HOSTS]]
