"""remember: the one insert every bounded memo of the exporter uses."""

from __future__ import annotations

from smtp_exporter.memo import remember
from smtp_exporter.protocol import reply


def test_a_full_memo_starts_over_instead_of_growing() -> None:
    memo: dict[int, str] = {}
    for key in range(3):
        assert remember(memo, key, str(key), limit=3) == str(key)
    assert memo == {0: "0", 1: "1", 2: "2"}
    assert remember(memo, 3, "3", limit=3) == "3"
    assert memo == {3: "3"}


def test_replies_that_always_differ_cannot_grow_the_shared_replies() -> None:
    parser = reply.ReplyParser()
    for n in range(reply.MAX_SHARED_REPLIES * 2 + 5):
        [parsed] = parser.feed(f"250 2.0.0 Ok: queued as {n:08X}\r\n".encode())
        assert parsed.lines == (f"2.0.0 Ok: queued as {n:08X}",)
        assert len(reply._shared_replies) <= reply.MAX_SHARED_REPLIES
