"""Helpers to run the exporter for real: in-process on the test's loop, or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smtp_exporter.config.web import WebConfig, load_web_config
from smtp_exporter.service import Exporter, ServiceOptions, load

REPO = Path(__file__).resolve().parents[2]
WAIT = 15.0  # generous bound for "eventually" conditions


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def sample_labels(text: str, name: str) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


class Running:
    """An in-process exporter and an HTTP client for it."""

    def __init__(self, exporter: Exporter, session: aiohttp.ClientSession, scheme: str = "http") -> None:
        self.exporter = exporter
        self.session = session
        port = exporter.addresses[0][1]
        self.url = f"{scheme}://127.0.0.1:{port}"

    async def get(self, path: str, **kwargs: object) -> tuple[int, str]:
        async with self.session.get(self.url + path, **kwargs) as response:  # type: ignore[arg-type]
            return response.status, await response.text()

    async def metrics(self) -> str:
        status, text = await self.get("/metrics")
        assert status == 200, text
        return text

    async def wait_metric(self, name: str, what: str | None = None, **labels: str) -> str:
        """Scrape until sample `name{labels}` exists; returns that scrape."""
        text = ""

        async def present() -> bool:
            nonlocal text
            text = await self.metrics()
            return sample_value(text, name, **labels) is not None

        await wait_for(present, what or f"{name}{labels}")
        return text


@asynccontextmanager
async def running_exporter(
    config_path: Path,
    *,
    web_config: WebConfig | None = None,
    web_config_file: Path | None = None,
    watch_interval: float = 0.2,
) -> AsyncIterator[Running]:
    """`web_config_file`: loaded, and watched as the command line's --web.config.file is."""
    if web_config_file is not None:
        web_config = load_web_config(str(web_config_file))
    options = ServiceOptions(
        config_file=str(config_path),
        listen_addresses=("127.0.0.1:0",),
        web_config=web_config or WebConfig(),
        web_config_file=None if web_config_file is None else str(web_config_file),
        watch_interval=watch_interval,
    )
    exporter = Exporter(load(options), options)
    await exporter.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(exporter, session)
    finally:
        await exporter.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """write_config(yaml_text) -> the path of a config file holding it (rewritten in place)."""
    path = tmp_path / "smtp-exporter.yml"

    def write(text: str) -> Path:
        path.write_text(text)
        return path

    return write


class ExporterProcess:
    """`python -m smtp_exporter ...` as a subprocess listening on 127.0.0.1:<kernel-chosen port>;
    `wrapper` runs it under another command (`unshare --net`)."""

    def __init__(self, *args: str, wrapper: tuple[str, ...] = ()) -> None:
        self.args = args
        self.wrapper = wrapper
        self.port = 0
        self.stderr_lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self) -> ExporterProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "smtp_exporter",
                "--web.listen-address",
                "127.0.0.1:0",
                *self.args,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO,
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        line = self.wait_log("exporter started")
        match = re.search(r"listen\W+127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.port = int(match.group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_log(self, needle: str, timeout: float = WAIT) -> str:
        """Wait for a stderr line containing `needle` (lines read meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no log line with {needle!r}; stderr:\n{''.join(self.stderr_lines)}")
            self.stderr_lines.append(line)
            if needle in line:
                return line

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        while True:  # the rest of stderr
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.stderr_lines.append(line)
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def exporter_process() -> Iterator[Callable[..., ExporterProcess]]:
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        process = ExporterProcess(*args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
