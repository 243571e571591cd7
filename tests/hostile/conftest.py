"""Fixtures of the hostile catalogue: its certificates and the peer process serving it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtp_exporter.config.schema import AuthConfig, AuthMechanism, ModuleConfig, Secret, TLSConfig
from smtp_exporter.model import Transaction
from tests.hostile.catalogue import PASSWORD, TIMEOUT, Hostile
from tests.hostile.certs import Material, build_material
from tests.servers.tls import TestCA

REPO = Path(__file__).resolve().parents[2]
USERNAME = "probe"


def secret_forms(username: str = USERNAME, password: str = PASSWORD) -> list[str]:
    """The password as it may leak: plain, AUTH PLAIN's blob, AUTH LOGIN's base64 line."""
    plain_blob = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    login_line = base64.b64encode(password.encode()).decode()
    return [password, plain_blob, login_line]


@pytest.fixture(scope="session")
def hostile_material(tls_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Material:
    return build_material(tmp_path_factory.mktemp("hostile-certs"), tls_ca)


class PeerProcess:
    """The running tests/hostile/peer_host.py process."""

    def __init__(self, material: Material, directory: Path, names: list[str] | None = None) -> None:
        material_file = directory / "material.json"
        material.dump(material_file)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.peer_host", str(material_file), *(names or [])],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        if not first:
            raise RuntimeError(f"hostile peer process exited with {self.process.wait()}")
        self.ports: dict[str, int] = json.loads(first)["ports"]

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def status(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"status {name}\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def wait_all_closed(self, name: str, at_least: int, timeout: float = 5.0) -> dict[str, Any]:
        """Poll until the peer accepted `at_least` connections and has none open."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if (status["accepted"] >= at_least and status["open"] == 0) or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def hostile_peers(
    hostile_material: Material, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PeerProcess]:
    peers = PeerProcess(hostile_material, tmp_path_factory.mktemp("hostile-peers"))
    yield peers
    peers.stop()


def module_for(hostile: Hostile, material: Material, *, timeout: float = TIMEOUT) -> ModuleConfig:
    options = dict(hostile.module)
    mechanism = options.pop("auth", None)
    auth = (
        AuthConfig(mechanism=AuthMechanism(mechanism), username=USERNAME, password=Secret(PASSWORD))
        if mechanism
        else None
    )
    return ModuleConfig(
        timeout=timeout,
        ehlo="probe.test",
        tls_config=TLSConfig(ca_file=material.chain_root if hostile.ca == "chain" else material.ca_file),
        transaction=Transaction(options.pop("transaction", "none")),
        auth=auth,
        **options,
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
