"""`with` and `async with` for the servers that start and stop synchronously, and the event-loop
thread the in-process servers run on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

T = TypeVar("T")


class StartStop:
    """Mixin: `start()` on entering, `stop()` on leaving, in both sync and async code (starting
    and stopping take milliseconds, so they run inline even on an event loop)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LoopThread(Generic[T]):
    """An event loop serving in a daemon thread of its own, so a server runs beside the test's
    code whatever that code blocks on.

    `start()` runs `open` on the loop and returns once it is done (raising its exception in the
    caller's thread); the loop then serves until `stop()`, which runs `close` with what `open`
    returned and closes the loop.
    """

    def __init__(
        self, name: str, open: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[None]]
    ) -> None:
        self.name = name
        self._open = open
        self._close = close
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                opened = loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start() in the test's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close(opened))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Stop serving, run `close`, end the thread. Idempotent."""
        if self._thread is None or self.loop is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self._thread = None


async def cancel_other_tasks() -> None:
    """Cancel every task of the running loop but the caller's, and wait for them to end."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
