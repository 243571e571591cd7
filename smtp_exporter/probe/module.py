"""`CompiledModule`: a module as probes run it, built once per config load.

Its SSL context was built by the config loader (its files read then, never at probe time);
its DNS client is made here, once per distinct `dns` section of a load, and so is what its mail
transaction says whatever the server offers (`Sender`). Nothing on the probe
path parses config or opens a file.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from smtp_exporter.config.modules import uses_tls
from smtp_exporter.config.schema import DNSConfig, ModuleConfig, TLSConfig
from smtp_exporter.posture import pkix
from smtp_exporter.posture.dns import PostureDNS
from smtp_exporter.posture.pkix import Trust
from smtp_exporter.probe.resolve import DNSClient
from smtp_exporter.probe.tls import keep_peer_chain
from smtp_exporter.protocol.envelope import Sender, compile_sender


@dataclass(frozen=True, slots=True)
class CompiledModule:
    name: str  # as the config names it: the `module` label of its results
    config: ModuleConfig
    tls_context: ssl.SSLContext | None  # None when its probes never speak TLS
    dns: DNSClient
    sender: Sender  # what its mail transaction says whatever the server offers
    posture_dns: PostureDNS | None  # the posture checks' lookups (DO set); None without `posture`
    imap_tls_context: ssl.SSLContext | None = None  # the delivery's IMAP connection; None: no delivery
    posture_trust: Trust | None = None  # MTA-STS's CAs; None without posture.mta_sts


def compile_modules(
    modules: Mapping[str, ModuleConfig], contexts: Mapping[TLSConfig, ssl.SSLContext]
) -> dict[str, CompiledModule]:
    """Every module of a config, with `contexts` (per `TLSConfig`, built by the loader for each
    module that uses TLS, and given here the probes' hook that keeps the peer's chain): modules
    with equal `dns` sections share one client (and one posture client, for those with `posture`)."""
    clients: dict[DNSConfig, DNSClient] = {}
    posture_clients: dict[DNSConfig, PostureDNS] = {}
    trusts: dict[str | None, Trust] = {}  # per posture.ca_file (None: the system's store)
    compiled = {}
    for name, module in modules.items():
        dns = clients.get(module.dns)
        if dns is None:
            dns = clients[module.dns] = DNSClient(module.dns)
        context = contexts[module.tls_config] if uses_tls(module) else None
        if context is not None:
            keep_peer_chain(context)
        posture_dns = None
        if module.posture is not None:
            posture_dns = posture_clients.get(module.dns)
            if posture_dns is None:
                posture_dns = posture_clients[module.dns] = PostureDNS(module.dns)
        trust = None
        if module.posture is not None and module.posture.mta_sts:
            ca_file = module.posture.ca_file
            trust = trusts.get(ca_file)
            if trust is None:
                trust = trusts[ca_file] = pkix.trust(ca_file)
        imap = contexts[module.delivery.imap.tls_config] if module.delivery is not None else None
        compiled[name] = CompiledModule(
            name, module, context, dns, compile_sender(module), posture_dns, imap, trust
        )
    return compiled
