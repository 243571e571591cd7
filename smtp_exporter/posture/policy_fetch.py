"""Fetching an MTA-STS policy as RFC 8461 section 3.3 tells senders to.

`https://mta-sts.<domain>/.well-known/mta-sts.txt`, the host's addresses looked up through the
module's `dns` settings (posture/dns.py, not the system resolver), its certificate PKIX-checked
for that host name against the system's CA store or `posture.ca_file`; only HTTP 200 counts, a
redirect is not followed (section 3.3: "MUST NOT follow redirects"), nothing is cached (a fresh
GET each run: aiohttp keeps no HTTP cache, and the connection is closed after it), the body is
read up to 64 KiB and a longer one refused, and the whole fetch is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from smtp_exporter.posture.dns import PostureDNS

MAX_POLICY_BYTES = 64 * 1024  # section 3.2: "64 KB"
POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_ADDRESSES = 8


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetch's outcome: `body` when the server answered 200 with a body within the cap,
    else `error` in words."""

    url: str
    body: bytes | None
    error: str | None = None
    status: int | None = None


class _Fixed(AbstractResolver):
    """Hands aiohttp the addresses already looked up through the module's DNS."""

    def __init__(self, host: str, addresses: list[tuple[str, int]]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:  # never: no redirect is followed, nothing else is asked
            raise OSError(f"{host} was not looked up")
        return [
            ResolveResult(hostname=host, host=ip, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)
            for ip, fam in self._addresses
        ]

    async def close(self) -> None:
        return None


async def fetch_policy(domain: str, dns: PostureDNS, context: ssl.SSLContext, timeout: float) -> Fetched:
    host = f"mta-sts.{domain}"
    url = f"https://{host}{POLICY_PATH}"
    try:
        async with asyncio.timeout(timeout):
            a, aaaa = await asyncio.gather(dns.lookup(host, "A"), dns.lookup(host, "AAAA"))
            addresses: list[tuple[str, int]] = [(str(r.address), socket.AF_INET) for r in a.records]  # type: ignore[attr-defined]
            addresses += [(str(r.address), socket.AF_INET6) for r in aaaa.records]  # type: ignore[attr-defined]
            if not addresses:
                failed = [lookup.describe() for lookup in (a, aaaa) if not lookup.answered]
                why = "; ".join(failed) if failed else ("does not exist" if a.nxdomain else "has no address")
                return Fetched(url, None, f"{host} {why}" if not failed else f"cannot resolve {why}")
            return await _get(url, host, addresses[:MAX_ADDRESSES], context)
    except TimeoutError:
        return Fetched(url, None, f"no policy within {timeout:g}s")


async def _get(url: str, host: str, addresses: list[tuple[str, int]], context: ssl.SSLContext) -> Fetched:
    connector = aiohttp.TCPConnector(
        resolver=_Fixed(host, addresses), ssl=context, force_close=True, use_dns_cache=False
    )
    try:
        async with (
            aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True) as session,
            session.get(url, allow_redirects=False, headers={"Accept": "text/plain"}) as response,
        ):
            status = response.status
            if status != 200:
                return Fetched(url, None, _status(status, response.headers.get("Location")), status)
            declared = response.content_length
            if declared is not None and declared > MAX_POLICY_BYTES:
                return Fetched(url, None, f"policy of {declared} bytes is over the 64 KiB limit", status)
            body = bytearray()
            while len(body) <= MAX_POLICY_BYTES:
                chunk = await response.content.read(MAX_POLICY_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_POLICY_BYTES:
                return Fetched(url, None, "policy is over the 64 KiB limit", status)
            return Fetched(url, bytes(body), None, status)
    except aiohttp.ClientConnectorCertificateError as exc:
        return Fetched(url, None, f"certificate of {host} is not valid: {_reason(exc.certificate_error)}")
    except aiohttp.ClientSSLError as exc:
        return Fetched(url, None, f"TLS with {host} failed: {_reason(exc)}")
    except aiohttp.ClientPayloadError as exc:
        return Fetched(url, None, f"policy body broken off: {_reason(exc)}")
    except (aiohttp.ClientError, OSError) as exc:
        return Fetched(url, None, f"cannot fetch {url}: {_reason(exc)}")


def _status(status: int, location: str | None) -> str:
    if 300 <= status < 400:
        where = f" to {location[:200]}" if location else ""
        return f"HTTP {status} redirect{where}: not followed (RFC 8461 section 3.3), no policy"
    return f"HTTP {status}, not 200: no policy"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    text = str(exc) or type(exc).__name__
    return text[:200]
