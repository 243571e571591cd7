"""A real headless Chromium, driven over its DevTools protocol (a websocket, with aiohttp).

Just what the page tests need: open a page at a window size, wait for its loads, evaluate
JavaScript in it (the tests' DOM checks; the page itself has none), and take a screenshot.

    async with Chromium.start(tmp_path) as browser:
        page = await browser.new_page(width=1280, height=900)
        await page.navigate(url)
        rows = await page.evaluate("document.querySelectorAll('tbody tr').length")
        png = await page.screenshot()
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import require_binary

START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 60.0


class Page:
    """One tab: its websocket, commands by id, and the events it sent, in order."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loads = 0
        self._loaded = asyncio.Event()
        self.console: list[str] = []  # console messages and log entries (CSP violations are logged)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Page.loadEventFired":
                self._loads += 1
                self._loaded.set()
            elif data.get("method") == "Log.entryAdded":
                self.console.append(data["params"]["entry"]["text"])
            elif data.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value")) for a in data["params"]["args"]))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self._socket.send_json({"id": number, "method": method, "params": params})
        answer = await asyncio.wait_for(future, COMMAND_TIMEOUT)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    @property
    def loads(self) -> int:
        """How many times a document finished loading in this tab (navigations and refreshes)."""
        return self._loads

    async def wait_loads(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` documents have loaded in this tab."""
        async with asyncio.timeout(timeout):
            while self._loads < count:
                self._loaded.clear()
                await self._loaded.wait()

    async def navigate(self, url: str) -> None:
        before = self._loads
        await self.send("Page.navigate", url=url)
        await self.wait_loads(before + 1)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def screenshot(self) -> bytes:
        """The whole page as PNG, however long it is."""
        answer = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(answer["data"])

    async def close(self) -> None:
        self._reader.cancel()
        await self._socket.close()


class Chromium:
    def __init__(
        self, process: asyncio.subprocess.Process, port: int, session: aiohttp.ClientSession
    ) -> None:
        self._process = process
        self._port = port
        self._session = session
        self._pages: list[Page] = []

    @classmethod
    @asynccontextmanager
    async def start(cls, profile: Path) -> AsyncIterator[Chromium]:
        chromium = require_binary("chromium")
        process = await asyncio.create_subprocess_exec(
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            port = await asyncio.wait_for(_devtools_port(process), START_TIMEOUT)
            async with aiohttp.ClientSession() as session:
                browser = cls(process, port, session)
                try:
                    yield browser
                finally:
                    for page in browser._pages:
                        await page.close()
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    async def new_page(self, *, width: int, height: int, mobile: bool = False) -> Page:
        """A new tab whose viewport is `width` x `height` CSS pixels (a phone's, with `mobile`)."""
        async with self._session.put(f"http://127.0.0.1:{self._port}/json/new?about:blank") as response:
            assert response.status == 200, await response.text()
            target = await response.json()
        socket = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(socket)
        self._pages.append(page)
        await page.send("Page.enable")
        await page.send("Log.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )
        return page


async def _devtools_port(process: asyncio.subprocess.Process) -> int:
    """The port from Chromium's "DevTools listening on ws://127.0.0.1:PORT/..." line."""
    assert process.stderr is not None
    seen = []
    while line := await process.stderr.readline():
        text = line.decode(errors="replace")
        seen.append(text)
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", text)
        if match:
            # Keep draining stderr, or Chromium blocks once the pipe is full.
            asyncio.get_running_loop().create_task(_drain(process.stderr))
            return int(match.group(1))
    raise AssertionError("chromium exited before its DevTools port was known:\n" + "".join(seen[-20:]))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
