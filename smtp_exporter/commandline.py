"""What the two commands (`smtp-exporter` and `smtp-exporter probe`) share: their argument
parser's error handling and the event loop they run on."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors exit with `usage_status` (2; the Nagios plugin API's UNKNOWN is 3) and one
    line on stderr, `<prog>: <message>`, no usage text."""

    def __init__(self, *args: Any, usage_status: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_status = usage_status

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(self.usage_status, f"{self.prog}: {message}\n")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (`pip install smtp-exporter[uvloop]`), else asyncio's loop."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        pass
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)
