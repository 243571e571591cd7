"""The README's quick start, replayed as a new user would type it (issue 16).

Every shell block of the README's "Quick start" is marked with an HTML comment saying what it is:

- `<!-- quickstart: install -->`: run to completion (exit 0); it may reach the package registry.
- `<!-- quickstart: serve HOST:PORT -->`: a server the user starts in a terminal of its own; it
  runs in the background until the end, and the next block waits until HOST:PORT accepts.
- `<!-- quickstart: run -->`: run to completion (exit 0).
- `<!-- quickstart: poll 30s -->`, followed by an `<!-- quickstart: output -->` block: run again
  (as a user would, for a result that comes within an interval) until it exits 0 printing exactly
  that output, for at most that long.
- `<!-- quickstart: ci -->`: the test command, which `.ci/run` runs as it is (not replayed here).

The blocks run in that order, unchanged, with `bash -euo pipefail`, in a fresh copy of the
checkout (its tracked and untracked, not ignored files: what a clone of the working tree would
hold) where the commands themselves create the virtual environment and pip installs from the copy.
Only the install blocks see the network (for the package registry); the rest run in a network
namespace of their own with only loopback up, which also proves that the first example needs
nothing but this machine. So an edit of the README that breaks a command, the expected output or
the order fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.helpers import require_binary

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"

_BLOCK = re.compile(
    r"^<!-- quickstart: (?P<kind>[a-z]+)(?: (?P<arg>[^ (]+))?(?: \([^)]*\))? -->\n"
    r"```(?P<lang>[a-z]+)\n(?P<text>.*?)\n```$",
    re.M | re.S,
)
_KINDS = {"install", "serve", "run", "poll", "output", "ci"}
_INSTALL_TIMEOUT = 600.0  # a cold pip cache downloads every dependency
_RUN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Block:
    kind: str
    arg: str | None
    text: str
    line: int  # in README.md, for the failure messages


def _quick_start_section(text: str) -> tuple[str, int]:
    start = text.index("\n## Quick start\n") + 1
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)], text.count("\n", 0, start)


def quickstart_blocks() -> list[Block]:
    """The marked blocks of the README's quick start, in order; every shell block there is marked."""
    section, first_line = _quick_start_section(README.read_text())
    blocks = []
    for match in _BLOCK.finditer(section):
        line = first_line + section.count("\n", 0, match.start()) + 1
        kind, lang = match["kind"], match["lang"]
        assert kind in _KINDS, f"README.md:{line}: unknown quickstart block kind {kind!r}"
        assert lang == ("text" if kind == "output" else "sh"), f"README.md:{line}: {kind} block in {lang}"
        blocks.append(Block(kind, match["arg"], match["text"], line))
    marked_shell = sum(block.kind != "output" for block in blocks)
    assert section.count("```sh\n") == marked_shell, "a shell block of the quick start has no marker"
    for index, block in enumerate(blocks):
        if block.kind == "poll":
            assert index + 1 < len(blocks) and blocks[index + 1].kind == "output", (
                f"README.md:{block.line}: a poll block needs an output block after it"
            )
    return blocks


def test_ci_runs_the_readmes_test_command_in_a_virtual_environment() -> None:
    blocks = quickstart_blocks()
    [install] = [block for block in blocks if block.kind == "install"]
    [tests] = [block for block in blocks if block.kind == "ci"]
    for command in (install.text, tests.text):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install "), command
        assert "\n" not in command  # one line to paste
    ci = CI.read_text()
    assert tests.text in ci.splitlines()
    assert "python3-venv" in ci


def _fresh_copy(destination: Path) -> None:
    """The checkout's files as git sees them (uncommitted edits included; .venv, caches excluded)."""
    git = require_binary("git")
    listed = subprocess.run(
        [git, "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _user_environment() -> dict[str, str]:
    """This process's environment without what would point the user's commands at this checkout
    or at the test runner's virtual environment instead of the fresh copy's own, and with a stock
    Debian PATH: `python3` is Debian's, not a newer one a developer (or CI) put first."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSAFEPATH"}
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


class Namespace:
    """A network namespace with only loopback up, held by a sleeping process; commands enter it
    with nsenter, so background servers and later commands share one loopback."""

    def __init__(self) -> None:
        unshare, self._nsenter, ip = (require_binary(name) for name in ("unshare", "nsenter", "ip"))
        self._user = os.geteuid() != 0
        mapping = ["--map-root-user"] if self._user else []
        script = f"{ip} link set lo up && echo up && exec sleep 3600"
        self._holder = subprocess.Popen(
            [unshare, "--net", *mapping, "sh", "-c", script], stdout=subprocess.PIPE, text=True
        )
        assert self._holder.stdout is not None
        ready = self._holder.stdout.readline()
        assert ready == "up\n", f"cannot make a network namespace: exit {self._holder.wait(10)}"

    def command(self, *argv: str) -> list[str]:
        user = ["--user", "--preserve-credentials"] if self._user else []
        return [self._nsenter, "--target", str(self._holder.pid), "--net", *user, *argv]

    def close(self) -> None:
        self._holder.kill()
        self._holder.wait(10)


def _bash(text: str) -> list[str]:
    return ["bash", "-euo", "pipefail", "-c", text]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Server:
    block: Block
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_accepting(namespace: Namespace, server: Server, cwd: Path, env: dict[str, str]) -> None:
    assert server.block.arg is not None and ":" in server.block.arg, f"README.md:{server.block.line}"
    host, port = server.block.arg.rsplit(":", 1)
    probe = namespace.command(*_bash(f"exec 3<>/dev/tcp/{host}/{port}"))
    deadline = time.monotonic() + 60.0
    while _run(probe, cwd, env, 10.0).returncode != 0:
        assert server.process.poll() is None, (
            f"README.md:{server.block.line}: the server exited ({server.process.returncode}):\n"
            f"{server.output()}"
        )
        assert time.monotonic() < deadline, f"README.md:{server.block.line}: nothing accepts on {host}:{port}"
        time.sleep(0.2)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:  # as Ctrl-C in each terminal would
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGINT)
    stuck = []
    for server in started:
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
            stuck.append(f"README.md:{server.block.line}")
    assert not stuck, f"Ctrl-C (SIGINT) did not stop {stuck}, as the README says it does"


def test_the_readmes_quick_start_replayed_in_a_fresh_copy(tmp_path: Path, servers: list[Server]) -> None:
    blocks = quickstart_blocks()
    kinds = [block.kind for block in blocks]
    assert {"install", "serve", "run", "poll"} <= set(kinds), kinds
    work = tmp_path / "smtp-exporter"
    work.mkdir()
    _fresh_copy(work)
    env = _user_environment()
    require_binary("curl")  # the README's commands use it; name the package when it is missing
    namespace = Namespace()
    logs: list[IO[bytes]] = []
    try:
        for index, block in enumerate(blocks):
            where = f"README.md:{block.line}"
            if block.kind == "install":
                done = _run(_bash(block.text), work, env, _INSTALL_TIMEOUT)
                assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            elif block.kind == "serve":
                log = tmp_path / f"serve-{block.line}.log"
                logs.append(log.open("wb"))
                process = subprocess.Popen(
                    namespace.command(*_bash(block.text)),
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, for Ctrl-C
                )
                servers.append(Server(block, process, log))
                _wait_accepting(namespace, servers[-1], work, env)
            elif block.kind == "run":
                done = _run(namespace.command(*_bash(block.text)), work, env, _RUN_TIMEOUT)
                assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
            elif block.kind == "poll":
                _poll(namespace, block, blocks[index + 1], work, env)
        _check_what_the_prose_says(namespace, servers, work, env)
    finally:
        namespace.close()
        for handle in logs:
            handle.close()


def _poll(namespace: Namespace, block: Block, expected: Block, cwd: Path, env: dict[str, str]) -> None:
    assert block.arg is not None and block.arg.endswith("s"), f"README.md:{block.line}: poll needs a duration"
    deadline = time.monotonic() + float(block.arg[:-1])
    while True:
        done = _run(namespace.command(*_bash(block.text)), cwd, env, _RUN_TIMEOUT)
        if done.returncode == 0 and done.stdout == expected.text + "\n":
            return
        assert time.monotonic() < deadline, (
            f"README.md:{block.line}: not the output of README.md:{expected.line} within {block.arg}: "
            f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        time.sleep(1.0)


def _check_what_the_prose_says(
    namespace: Namespace, servers: list[Server], cwd: Path, env: dict[str, str]
) -> None:
    """The README's sentences around the blocks: the test server printed the message smtp_full
    sent, the exporter listening on loopback logged no exposure warning, the status page lists
    the target, and every server is still running (nothing above killed one)."""
    by_address = {server.block.arg: server for server in servers}
    sink, exporter = by_address["127.0.0.1:2525"], by_address["127.0.0.1:9725"]
    assert "Subject: smtp-exporter probe" in sink.output(), sink.output()
    assert "exporter started" in exporter.output(), exporter.output()
    assert "/probe is unrestricted" not in exporter.output(), exporter.output()
    page = _run(namespace.command("curl", "-sf", "http://localhost:9725/"), cwd, env, 30.0)
    assert page.returncode == 0 and "127.0.0.1:2525" in page.stdout, page
    for server in servers:
        assert server.process.poll() is None, f"README.md:{server.block.line}: exited\n{server.output()}"
