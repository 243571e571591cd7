"""The snapshot a load compiles: parsed targets, compiled modules, the allowlist, the files."""

from __future__ import annotations

import os
from pathlib import Path

from smtp_exporter.snapshot import load_snapshot
from smtp_exporter.targets import parse_target
from tests.servers.tls import TestCA


def test_a_load_compiles_targets_modules_allowlist_and_files(tmp_path: Path, tls_ca: TestCA) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")
    path = tmp_path / "config.yml"
    path.write_text(
        f"""
modules:
  plain: {{starttls: never}}
  secure: {{starttls: required, tls_config: {{ca_file: {tls_ca.ca_file}}}}}
  login:
    starttls: required
    tls_config: {{ca_file: {tls_ca.ca_file}}}
    auth: {{username: probe, password_file: password}}
targets:
  - {{target: MX1.Example.org, module: secure}}
  - {{target: "[::1]:2525", module: plain}}
http_probe: {{allowed_targets: ["*.example.org:25"]}}
"""
    )
    snapshot = load_snapshot(str(path))
    first, second = snapshot.targets
    assert first.target == parse_target("MX1.Example.org", 25) and first.module is snapshot.modules["secure"]
    assert second.target == parse_target("[::1]:2525", 25) and second.module is snapshot.modules["plain"]
    assert snapshot.modules["plain"].tls_context is None
    secure, login = snapshot.modules["secure"], snapshot.modules["login"]
    assert secure.tls_context is not None and login.tls_context is secure.tls_context  # equal tls_config
    assert secure.dns is login.dns  # equal dns sections share a client
    assert login.config.auth is not None and login.config.auth.password.reveal() == "secret"
    assert snapshot.files == (tls_ca.ca_file, str(password))
    assert snapshot.allowlist.allows_target(first.target)
    assert not snapshot.allowlist.allows_target(second.target)


def test_the_snapshot_holds_its_files_content_after_they_go(tmp_path: Path, tls_ca: TestCA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(Path(tls_ca.ca_file).read_bytes())
    path = tmp_path / "config.yml"
    path.write_text(f"modules:\n  secure: {{starttls: required, tls_config: {{ca_file: {ca_file}}}}}\n")
    snapshot = load_snapshot(str(path))
    os.unlink(ca_file)
    context = snapshot.modules["secure"].tls_context
    assert context is not None and context.get_ca_certs()  # loaded at load, not read again
