"""ReplyParser and Reply: RFC 5321 4.2 replies over bytes, bounded, chunking-independent."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_exporter.model import Phase, PhaseResult, ServerInfo
from smtp_exporter.protocol.reply import (
    MAX_LINE_BYTES,
    MAX_REPLY_BYTES,
    MAX_REPLY_LINES,
    MAX_TEXT_CHARS,
    MalformedReplyError,
    NotAReplyError,
    ProtocolError,
    Reply,
    ReplyParser,
)

EHLO = b"250-mail.test Hello\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 STARTTLS\r\n"


def feed_all(data: bytes) -> list[Reply]:
    return ReplyParser().feed(data)


def feed_bytewise(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    replies: list[Reply] = []
    for i in range(len(data)):
        replies += parser.feed(data[i : i + 1])
    return replies


def feed_split(data: bytes, cut: int) -> list[Reply]:
    parser = ReplyParser()
    return parser.feed(data[:cut]) + parser.feed(data[cut:])


def test_single_line_reply() -> None:
    assert feed_all(b"220 mail.test ESMTP ready\r\n") == [Reply(220, ("mail.test ESMTP ready",))]


def test_multi_line_reply() -> None:
    (reply,) = feed_all(EHLO)
    assert reply == Reply(250, ("mail.test Hello", "SIZE 10240000", "8BITMIME", "STARTTLS"))
    assert reply.text == "mail.test Hello\nSIZE 10240000\n8BITMIME\nSTARTTLS"
    assert reply.code_class == 2


@pytest.mark.parametrize("data", [EHLO, b"220 hi\r\n250 ok\r\n", b"250-a\n250-b\r\n250 c\n"])
def test_split_at_every_byte_boundary(data: bytes) -> None:
    expected = feed_all(data)
    assert expected
    assert feed_bytewise(data) == expected
    for cut in range(len(data) + 1):
        assert feed_split(data, cut) == expected, cut


def test_several_replies_in_one_chunk_and_pending() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250 one\r\n250 two\r\n354 go") == [Reply(250, ("one",)), Reply(250, ("two",))]
    assert parser.pending
    assert parser.feed(b" ahead\r\n") == [Reply(354, ("go ahead",))]
    assert not parser.pending
    assert parser.feed(b"250-first\r\n") == []
    assert parser.pending  # a multi-line reply under way, nothing buffered


def test_code_only_lines() -> None:
    assert feed_all(b"250\r\n") == [Reply(250, ("",))]
    assert feed_all(b"250-\r\n250\r\n") == [Reply(250, ("", ""))]


def test_bare_lf_is_tolerated() -> None:
    assert feed_all(b"250-a\n250 b\n") == [Reply(250, ("a", "b"))]


@pytest.mark.parametrize("data", [b"250 a\rb\r\n", b"250 a\r\r\n", b"250-a\r250 b\r\n"])
def test_bare_cr_is_rejected(data: bytes) -> None:
    with pytest.raises(MalformedReplyError, match="bare CR"):
        feed_all(data)
    with pytest.raises(MalformedReplyError, match="bare CR"):
        feed_bytewise(data)


def test_cr_at_the_end_of_a_chunk_waits_for_its_lf() -> None:
    parser = ReplyParser()
    assert parser.feed(b"250 ok\r") == []
    assert parser.feed(b"\n") == [Reply(250, ("ok",))]


def test_nul_is_rejected() -> None:
    with pytest.raises(MalformedReplyError, match="NUL"):
        feed_all(b"250 a\x00b\r\n")
    with pytest.raises(MalformedReplyError, match="NUL"):
        feed_bytewise(b"250-ok\r\n250 a\x00b\r\n")


def test_continuation_with_a_different_code_is_rejected() -> None:
    with pytest.raises(MalformedReplyError, match="continuation line with code 251"):
        feed_all(b"250-a\r\n251 b\r\n")


@pytest.mark.parametrize(
    "data",
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 400 Bad Request\r\n", b"2x0 hi\r\n", b"25\r\n", b"2500\r\n"],
)
def test_not_a_reply(data: bytes) -> None:
    with pytest.raises(NotAReplyError):
        feed_all(data)


def test_garbage_inside_a_multi_line_reply_is_malformed() -> None:
    with pytest.raises(MalformedReplyError, match="malformed continuation"):
        feed_all(b"250-a\r\nhello\r\n")


def test_parser_stays_broken_after_an_error() -> None:
    parser = ReplyParser()
    with pytest.raises(NotAReplyError):
        parser.feed(b"garbage\r\n")
    assert parser.broken
    with pytest.raises(MalformedReplyError, match="earlier protocol error"):
        parser.feed(b"250 ok\r\n")


def test_line_bound_is_exact_whatever_the_chunking() -> None:
    longest = b"250 " + b"x" * (MAX_LINE_BYTES - 4) + b"\r\n"
    (reply,) = feed_all(longest)
    assert len(reply.lines[0]) == MAX_LINE_BYTES - 4
    assert feed_bytewise(longest) == [reply]
    too_long = b"250 " + b"x" * (MAX_LINE_BYTES - 3) + b"\r\n"
    with pytest.raises(MalformedReplyError, match="longer than"):
        feed_all(too_long)
    with pytest.raises(MalformedReplyError, match="longer than"):
        feed_bytewise(too_long)


def test_a_line_without_end_stops_at_the_bound() -> None:
    parser = ReplyParser()
    parser.feed(b"220 " + b"x" * (MAX_LINE_BYTES - 4))
    with pytest.raises(MalformedReplyError, match="without a line end"):
        parser.feed(b"xx")
    with pytest.raises(MalformedReplyError):
        ReplyParser().feed(b"220 " + b"x" * (1 << 20))


def test_lines_bound() -> None:
    ok = b"".join(b"250-l%d\r\n" % i for i in range(MAX_REPLY_LINES - 1)) + b"250 end\r\n"
    assert len(feed_all(ok)[0].lines) == MAX_REPLY_LINES
    too_many = b"250-x\r\n" * MAX_REPLY_LINES + b"250 end\r\n"
    with pytest.raises(MalformedReplyError, match="more than"):
        feed_all(too_many)


def test_bytes_bound() -> None:
    line = b"250-" + b"y" * 1000 + b"\r\n"
    with pytest.raises(MalformedReplyError, match=f"longer than {MAX_REPLY_BYTES}"):
        feed_all(line * (MAX_REPLY_BYTES // len(line) + 1))


def test_bounds_are_per_reply() -> None:
    line = b"250-" + b"y" * 1000 + b"\r\n"
    reply = line * 20 + b"250 end\r\n"
    parser = ReplyParser()
    for _ in range(5):  # 5 x 20 KB: more than MAX_REPLY_BYTES in all, fine reply by reply
        assert len(parser.feed(reply)) == 1


@pytest.mark.parametrize(
    ("first_line", "status"),
    [
        ("2.0.0 Ok", "2.0.0"),
        ("5.1.1 <x@y>: Recipient address rejected", "5.1.1"),
        ("4.7.0 TLS", "4.7.0"),
        ("4.123.456 long", "4.123.456"),
        ("2.0.0", "2.0.0"),
        ("mail.test ESMTP", None),
        ("3.0.0 wrong class", None),
        ("5.1 short", None),
        ("5.1.1234 long detail", None),
        ("5.a.1 letters", None),
        ("5.1.1.1 four parts", None),
        ("", None),
    ],
)
def test_enhanced_status(first_line: str, status: str | None) -> None:
    assert _phase_of(Reply(550, (first_line, "more"))).enhanced_status == status


def test_enhanced_status_without_lines() -> None:
    assert _phase_of(Reply(250, ())).enhanced_status is None


def _phase_of(reply: Reply) -> PhaseResult:
    """The phase a reply ends, as the session records it: the status is read from its text."""
    return PhaseResult(Phase.RCPT, 0.001, reply.code, reply.summary_text)


def test_summary_is_one_capped_line() -> None:
    assert Reply(250, ("a", "b")).summary() == "250 a b"
    assert Reply(250, ("",)).summary() == "250"
    long = Reply(250, ("z" * (MAX_TEXT_CHARS + 100),)).summary()
    assert long.endswith("...")
    assert len(long) == len("250 ") + MAX_TEXT_CHARS + 3


def test_invalid_utf8_is_kept_readable() -> None:
    (reply,) = feed_all(b"220 caf\xe9\r\n")
    assert reply.lines == ("caf\\xe9",)


# -- property-based ----------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _bounded(parser: ReplyParser) -> None:
    # What a parser holds: the unfinished line plus the lines of the reply under way.
    assert len(parser._buffer) <= MAX_LINE_BYTES + 1
    assert parser._reply_bytes <= MAX_REPLY_BYTES
    # Decoded text: at most 4 characters per raw byte ("\xNN" for invalid UTF-8).
    assert sum(len(line) for line in parser._lines) <= 4 * MAX_REPLY_BYTES
    assert len(parser._buffer) + parser._reply_bytes <= MAX_REPLY_BYTES + MAX_LINE_BYTES + 1


_noise = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [b"250", b"-", b" ", b"\r", b"\n", b"\r\n", b"x", b"\x00", b"\xff", b"251", b"2.0.0"]
        ),
        max_size=80,
    ).map(b"".join),
)


@PROPERTY
@given(data=st.data(), raw=_noise)
def test_feed_only_raises_protocol_errors_and_stays_bounded(data: st.DataObject, raw: bytes) -> None:
    parser = ReplyParser()
    for chunk in data.draw(chunked(raw)):
        try:
            parser.feed(chunk)
        except ProtocolError:
            assert parser.broken
            return
        _bounded(parser)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), size=st.integers(1, 3 * MAX_REPLY_BYTES), line=st.integers(1, 2 * MAX_LINE_BYTES))
def test_large_input_stays_bounded(data: st.DataObject, size: int, line: int) -> None:
    unit = b"250-" + b"y" * line + b"\r\n"
    raw = (unit * (size // len(unit) + 1))[:size]
    parser = ReplyParser()
    for chunk in data.draw(chunked(raw)):
        try:
            parser.feed(chunk)
        except ProtocolError:
            return
        _bounded(parser)


_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00", exclude_categories=("Cs",)), max_size=60
)


@st.composite
def replies(draw: st.DrawFn) -> tuple[list[Reply], bytes]:
    made: list[Reply] = []
    wire = b""
    for _ in range(draw(st.integers(1, 4))):
        code = draw(st.integers(100, 599))
        lines = tuple(draw(st.lists(_text, min_size=1, max_size=8)))
        eol = draw(st.sampled_from([b"\r\n", b"\n"]))
        for i, line in enumerate(lines):
            sep = b"-" if i < len(lines) - 1 else b" "
            if not line and draw(st.booleans()):
                sep = b"" if i == len(lines) - 1 else sep  # "250" alone ends a reply too
            wire += b"%d" % code + sep + line.encode() + eol
        made.append(Reply(code, lines))
    return made, wire


@PROPERTY
@given(data=st.data(), generated=replies())
def test_round_trip_regardless_of_chunking(data: st.DataObject, generated: tuple[list[Reply], bytes]) -> None:
    expected, wire = generated
    assert feed_all(wire) == expected
    parser = ReplyParser()
    got: list[Reply] = []
    for chunk in data.draw(chunked(wire)):
        got += parser.feed(chunk)
    assert got == expected
    assert not parser.pending


@PROPERTY
@given(data=st.data(), raw=_noise)
def test_chunking_never_changes_the_outcome(data: st.DataObject, raw: bytes) -> None:
    """Whole or in pieces: the same replies, or the same kind of error (replies already
    complete in the chunk that fails are not returned, so the whole-feed ones are a prefix)."""

    def run(chunks: list[bytes]) -> tuple[list[Reply], type[ProtocolError] | None]:
        parser, got = ReplyParser(), []
        for chunk in chunks:
            try:
                got += parser.feed(chunk)
            except ProtocolError as exc:
                return got, type(exc)
        return got, None

    whole, whole_error = run([raw])
    pieces, pieces_error = run(data.draw(chunked(raw)))
    assert whole_error == pieces_error
    if whole_error is None:
        assert pieces == whole
    else:
        assert pieces[: len(whole)] == whole


def test_non_ascii_digits_are_not_an_enhanced_status_or_a_size() -> None:
    reply = ReplyParser().feed("550 5.1.\u00b2 no\r\n".encode())[0]
    assert _phase_of(reply).enhanced_status is None
    assert ServerInfo(extensions=(("SIZE", ("\u00b2",)),)).max_message_size is None
