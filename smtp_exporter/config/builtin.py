"""The modules that work with no config file at all; a config file may override them."""

from __future__ import annotations

from smtp_exporter.config.schema import ModuleConfig, StartTLS
from smtp_exporter.model import Transaction

BUILTIN_MODULES: dict[str, ModuleConfig] = {
    "smtp_handshake": ModuleConfig(),
    "smtp_envelope": ModuleConfig(transaction=Transaction.ENVELOPE),
    "smtp_full": ModuleConfig(transaction=Transaction.MESSAGE),
    "smtps_handshake": ModuleConfig(port=465, implicit_tls=True),
    # AUTH happens when a config file gives this module an `auth` block.
    "submission": ModuleConfig(port=587, starttls=StartTLS.REQUIRED),
}
