"""`CompiledModule`: a module as probes run it, built once per config load.

Its SSL context was built by the config loader (its files read then, never at probe time);
its DNS client is made here, once per distinct `dns` section of a load. Nothing on the probe
path parses config or opens a file.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from smtp_exporter.config.modules import uses_tls
from smtp_exporter.config.schema import DNSConfig, ModuleConfig, TLSConfig
from smtp_exporter.probe.resolve import DNSClient
from smtp_exporter.probe.tls import keep_peer_chain


@dataclass(frozen=True, slots=True)
class CompiledModule:
    name: str  # as the config names it: the `module` label of its results
    config: ModuleConfig
    tls_context: ssl.SSLContext | None  # None when its probes never speak TLS
    dns: DNSClient
    imap_tls_context: ssl.SSLContext | None = None  # the delivery's IMAP connection; None: no delivery


def compile_modules(
    modules: Mapping[str, ModuleConfig], contexts: Mapping[TLSConfig, ssl.SSLContext]
) -> dict[str, CompiledModule]:
    """Every module of a config, with `contexts` (per `TLSConfig`, built by the loader for each
    module that uses TLS, and given here the probes' hook that keeps the peer's chain): modules
    with equal `dns` sections share one client."""
    clients: dict[DNSConfig, DNSClient] = {}
    compiled = {}
    for name, module in modules.items():
        dns = clients.get(module.dns)
        if dns is None:
            dns = clients[module.dns] = DNSClient(module.dns)
        context = contexts[module.tls_config] if uses_tls(module) else None
        if context is not None:
            keep_peer_chain(context)
        imap = contexts[module.delivery.imap.tls_config] if module.delivery is not None else None
        compiled[name] = CompiledModule(name, module, context, dns, imap)
    return compiled
