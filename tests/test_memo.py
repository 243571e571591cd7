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


def test_the_replies_to_a_pipelined_batch_are_read_as_the_same_replies_one_at_a_time() -> None:
    # MAIL, RCPT and DATA answered in one chunk (RFC 2920), once with a multi-line reply among
    # them: each reply is the one a chunk of its own gives, the remembered object itself.
    alone = [
        reply.ReplyParser().feed(data)[0]
        for data in (b"250 2.1.0 Ok\r\n", b"250-2.1.5 Ok\r\n250 2.1.5 really\r\n", b"354 go ahead\r\n")
    ]
    batch = reply.ReplyParser().feed(b"250 2.1.0 Ok\r\n250-2.1.5 Ok\r\n250 2.1.5 really\r\n354 go ahead\r\n")
    assert batch == alone
    assert all(a is b for a, b in zip(batch, alone, strict=True))
