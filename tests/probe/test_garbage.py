"""Probes leave no reference cycles behind, failed ones included.

The exporter runs the cyclic collector rarely (service.GC_THRESHOLDS), so a cycle made per probe
(typically a raised exception kept where its own traceback's frames can reach it) would hold
each probe's conversation until a full collection: resident memory that grows with the probe
rate, not the target count.
"""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import smtp_exporter
from smtp_exporter.model import Transaction
from smtp_exporter.probe import Prober
from tests.probe.common import compiled, describe, module
from tests.servers import scripted
from tests.servers.scripted import Close, ScriptedServer, Send, Sleep

ScriptedFactory = Callable[..., Awaitable[ScriptedServer]]

CASES = {
    "healthy": scripted.minimal_conversation(),
    "refused_at_rcpt": scripted.minimal_conversation(RCPT=b"550 5.1.1 No such user\r\n"),
    "refused_at_greeting": [Send(b"554 5.7.1 go away\r\n")],
    "unsolicited_reply_in_transaction": scripted.minimal_conversation(
        MAIL=b"250 2.1.0 Ok\r\n250 2.0.0 one more, never asked for\r\n"
    ),
    "closed_in_transaction": [*scripted.until_rcpt(), Close()],
    "deadline_in_transaction": [*scripted.until_rcpt(), Sleep(30)],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_probe_leaves_no_cycles(scripted_server: ScriptedFactory, case: str) -> None:
    server = await scripted_server(CASES[case])
    prober = Prober()
    probe_module = module(port=server.port, transaction=Transaction.MESSAGE, timeout=0.5)
    await prober.probe(*compiled(server.target, "m", probe_module))  # first use: caches and memos fill
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage, to be read
    try:
        for _ in range(3):
            result = await prober.probe(*compiled(server.target, "m", probe_module))
        assert result.failure is None or case != "healthy", describe(result)
        await asyncio.sleep(0.05)  # closed transports let go of their protocols
        del result
        gc.collect()
        ours = [obj for obj in gc.garbage if _ours(obj)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # asyncio's own selector transports are cyclic (uvloop's, which the exporter runs on, are
    # not): only what the probe made counts.
    assert not ours, f"{case}: in reference cycles after 3 probes: {sorted({_name(o) for o in ours})}"


def _ours(obj: object) -> bool:
    if isinstance(obj, types.FrameType):
        return obj.f_code.co_filename.startswith(PACKAGE)
    if isinstance(obj, BaseException | types.TracebackType):
        return True
    return type(obj).__module__.startswith("smtp_exporter")


def _name(obj: object) -> str:
    if isinstance(obj, types.FrameType):
        return f"frame of {obj.f_code.co_name}"
    return type(obj).__qualname__


PACKAGE = str(Path(smtp_exporter.__file__).parent)
