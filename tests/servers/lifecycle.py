"""`with` and `async with` for the servers that start and stop synchronously."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
