"""Fuzzing the pure protocol code beyond tests/protocol: a reference model of the reply
grammar checked against the parser under arbitrary chunking, and the EHLO parser on
arbitrary replies."""

from __future__ import annotations

import itertools
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_exporter.model import Phase, PhaseResult
from smtp_exporter.protocol import (
    EhloResponse,
    MalformedReplyError,
    NotAReplyError,
    ProtocolError,
    Reply,
    ReplyParser,
    parse_ehlo,
)
from smtp_exporter.protocol.ehlo import MAX_EXTENSION_PARAMS, MAX_KEYWORD_CHARS
from smtp_exporter.protocol.reply import MAX_LINE_BYTES, MAX_REPLY_BYTES, MAX_REPLY_LINES

FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def reference(data: bytes) -> tuple[list[Reply], type[ProtocolError] | None]:
    """RFC 5321 4.2 replies, line by line, with the parser's documented bounds: what a
    stream of bytes must yield (complete replies, then the first error, if any)."""
    replies: list[Reply] = []
    code, texts, size = -1, [], 0
    *complete, rest = data.split(b"\n")
    for raw in complete:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        size += len(line) + 2
        if len(line) > MAX_LINE_BYTES or size > MAX_REPLY_BYTES or b"\r" in line or b"\x00" in line:
            return replies, MalformedReplyError
        head = line[:3]
        if len(head) < 3 or not head.isdigit() or (len(line) > 3 and line[3] not in b" -"):
            return replies, NotAReplyError if code == -1 else MalformedReplyError
        if code not in (-1, int(head)):
            return replies, MalformedReplyError
        texts.append(line[4:].decode("utf-8", "backslashreplace"))
        if len(texts) > MAX_REPLY_LINES:
            return replies, MalformedReplyError
        if line[3:4] == b"-":
            code = int(head)
        else:
            replies.append(Reply(int(head), tuple(texts)))
            code, texts, size = -1, [], 0
    cr = rest.find(b"\r")
    if len(rest) > MAX_LINE_BYTES or (cr >= 0 and cr != len(rest) - 1):
        return replies, MalformedReplyError
    return replies, None


def run_parser(chunks: list[bytes]) -> tuple[list[Reply], type[ProtocolError] | None]:
    parser = ReplyParser()
    replies: list[Reply] = []
    for chunk in chunks:
        try:
            replies += parser.feed(chunk)
        except MalformedReplyError:
            return replies, MalformedReplyError
        except NotAReplyError:
            return replies, NotAReplyError
    return replies, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


# Input near the grammar: valid lines, and lines broken in every way the grammar cares about.
line_pieces = st.one_of(
    st.builds(
        lambda code, sep, text, end: code + sep + text + end,
        st.sampled_from([b"250", b"220", b"251", b"421", b"550", b"000", b"999", b"25", b"2x0", b""]),
        st.sampled_from([b" ", b"-", b"", b"x", b"\t"]),
        st.binary(max_size=12) | st.sampled_from([b"OK", b"\xff\xfe", b"caf\xc3\xa9", b"a\rb", b"\x00"]),
        st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n"]),
    ),
    st.just(b"250-" + b"x" * (MAX_LINE_BYTES - 6) + b"\r\n"),
    st.just(b"250-" + b"x" * (MAX_LINE_BYTES - 3) + b"\r\n"),
)
near_replies = st.lists(line_pieces, max_size=30).map(b"".join)


@FUZZ
@given(data=near_replies, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_parser_matches_the_reference_whatever_the_chunking(data: bytes, cuts: list[int]) -> None:
    expected_replies, expected_error = reference(data)
    replies, error = run_parser(split(data, cuts))
    assert error is expected_error
    if error is None:
        assert replies == expected_replies
    else:
        # Replies completed in the chunk that also held the error are dropped with it.
        assert replies == expected_replies[: len(replies)]


@FUZZ
@given(data=near_replies)
def test_one_chunk_fast_path_equals_byte_by_byte(data: bytes) -> None:
    """The single-reply fast path and the line-by-line path read the same bytes the same way."""
    whole = run_parser([data])
    bytewise = run_parser([data[i : i + 1] for i in range(len(data))] or [b""])
    assert whole[1] is bytewise[1]
    if whole[1] is None:
        assert whole[0] == bytewise[0]


@FUZZ
@given(many=st.lists(st.binary(min_size=1, max_size=64 * 1024), min_size=1, max_size=40))
def test_a_stream_of_megabytes_never_grows_the_parser(many: list[bytes]) -> None:
    parser = ReplyParser()
    tracemalloc.start()
    try:
        for chunk in many:
            try:
                parser.feed(chunk)
            except ProtocolError:
                break
            assert len(parser._buffer) <= MAX_LINE_BYTES
            assert sum(len(t) for t in parser._lines) <= MAX_REPLY_BYTES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


ehlo_lines = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "AUTH=LOGIN PLAIN",
                "AUTH PLAIN LOGIN CRAM-MD5",
                "SIZE 10240000",
                "SIZE",
                "STARTTLS",
                "-X",
                "8BITMIME",
                "x" * 200,
                "AUTH " + " ".join(f"M{i}" for i in range(100)),
                "  ",
                "=",
                "A=",
                "\u00e9T\u00c9",
                "\x00",
            ]
        ),
    ),
    max_size=70,
)


@FUZZ
@given(code=st.integers(0, 999), lines=ehlo_lines)
def test_ehlo_parser_never_fails_and_stays_bounded(code: int, lines: list[str]) -> None:
    result = parse_ehlo(Reply(code, tuple(lines)))
    assert isinstance(result, EhloResponse)
    assert len(result.hostname) <= 255
    keywords = [k for k, _ in result.extensions]
    assert len(keywords) == len(set(keywords)) <= max(len(lines) - 1, 0)
    for keyword, params in result.extensions:
        assert keyword == keyword.upper() and keyword.isascii() and 0 < len(keyword) <= MAX_KEYWORD_CHARS
        assert keyword[0].isalnum() and keyword.replace("-", "").isalnum()
        assert len(params) <= MAX_EXTENSION_PARAMS and len(set(params)) == len(params)


@FUZZ
@given(data=near_replies)
def test_ehlo_of_whatever_the_parser_yields(data: bytes) -> None:
    """Everything the parser lets through can be read as an EHLO reply."""
    replies, _ = run_parser([data])
    for reply in replies:
        parse_ehlo(reply)
        assert "\n" not in reply.summary()
        enhanced = PhaseResult(Phase.EHLO, 0.0, reply.code, reply.summary_text).enhanced_status
        assert enhanced is None or (enhanced[0] in "245" and enhanced.count(".") == 2)
