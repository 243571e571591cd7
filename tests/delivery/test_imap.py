"""The IMAP response parser of the delivery check (delivery/imap.py): whole responses with their
literals out of arbitrary chunks, and every read bounded."""

from __future__ import annotations

import pytest

from smtp_exporter.delivery.imap import (
    MAX_LINE,
    MAX_LITERAL,
    IMAPProtocolError,
    ResponseParser,
    quoted,
    split_literals,
)


def test_responses_and_literals_come_out_whole_from_any_chunking() -> None:
    data = (
        b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"
        b"* 3 FETCH (UID 17 BODY[HEADER] {13}\r\nReceived: x\r\n)\r\n"
        b"* SEARCH 4 17\r\na1 OK done\r\n"
    )
    for size in (1, 5, len(data)):
        parser = ResponseParser()
        out = []
        for start in range(0, len(data), size):
            out += parser.feed(data[start : start + size])
        assert [r.status for r in out] == ["OK", "FETCH", "SEARCH", "OK"]
        assert out[0].capabilities() == frozenset({"IMAP4REV1", "IDLE"})
        assert out[1].fetch_uid() == 17 and out[1].literals == (b"Received: x\r\n",)
        assert out[2].search_uids() == [4, 17]
        assert out[3].tag == "a1" and not parser.buffered


def test_a_line_without_end_is_refused_at_the_bound() -> None:
    parser = ResponseParser()
    with pytest.raises(IMAPProtocolError, match="longer than"):
        for _ in range(MAX_LINE // 65536 + 2):
            parser.feed(b"x" * 65536)


def test_a_literal_above_the_bound_is_refused_before_it_is_read() -> None:
    with pytest.raises(IMAPProtocolError, match="literal"):
        ResponseParser().feed(b"* 1 FETCH (BODY[HEADER] {%d}\r\n" % (MAX_LITERAL + 1))


def test_strings_are_quoted_or_sent_as_literals() -> None:
    assert quoted('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    literal = quoted("pässword")
    assert literal == b"{9}\r\np\xc3\xa4ssword"
    assert split_literals(b"a1 LOGIN u " + literal + b"\r\n") == [
        b"a1 LOGIN u {9}\r\n",
        b"p\xc3\xa4ssword\r\n",
    ]
