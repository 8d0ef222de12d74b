"""Reading health answers (sans-IO): llhttp's verdicts on framing, keep-alive and bad bytes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.protocol.answer import MAX_HEALTH_BODY, AnswerReader, BadAnswer

PLAIN = b"HTTP/1.1 200 OK\r\nX-Load: 3\r\nContent-Length: 2\r\n\r\nok"


def read(*pieces: bytes) -> AnswerReader:
    """A reader fed these pieces in turn; the answer must be whole after the last one."""
    reader = AnswerReader()
    for piece in pieces[:-1]:
        assert not reader.feed(piece)
    assert reader.feed(pieces[-1])
    return reader


def test_answer_with_length_is_whole_and_keeps_the_connection() -> None:
    """Status, headers as sent, body; an HTTP/1.1 answer with a length leaves the connection reusable."""
    reader = read(PLAIN)
    assert (reader.status, reader.headers, bytes(reader.body)) == (
        200,
        [(b"X-Load", b"3"), (b"Content-Length", b"2")],
        b"ok",
    )
    assert reader.reusable


def test_answer_in_pieces_is_whole_only_at_its_last_byte() -> None:
    """Every split of an answer reads the same as the answer in one piece."""
    for cut in range(1, len(PLAIN)):
        reader = read(PLAIN[:cut], PLAIN[cut:])
        assert (reader.status, bytes(reader.body), reader.reusable) == (200, b"ok", True)


def test_next_check_on_the_same_connection_reads_afresh() -> None:
    """`begin` forgets the last answer; llhttp carries on with the next one on the connection."""
    reader = read(PLAIN)
    reader.begin()
    assert reader.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    assert (reader.status, reader.headers, bytes(reader.body)) == (503, [(b"Content-Length", b"0")], b"")


def test_chunked_body_is_joined() -> None:
    """A chunked answer's body is the chunks joined; the connection stays reusable."""
    reader = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\n12\r\n1\r\n5\r\n0\r\n\r\n")
    assert (bytes(reader.body), reader.reusable) == (b"125", True)


@pytest.mark.parametrize(
    "head", [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"]
)
def test_body_framed_by_the_end_of_the_stream(head: bytes) -> None:
    """No length and no chunking: the body runs to the close (RFC 9112 §6.3), and the connection ends."""
    reader = AnswerReader()
    assert not reader.feed(head + b"7")
    assert reader.feed(b"")
    assert (reader.status, bytes(reader.body), reader.reusable) == (200, b"7", False)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_answer_that_closes_is_not_reusable(answer: bytes) -> None:
    """`Connection: close`, or HTTP/1.0 without keep-alive, ends the connection after the answer."""
    assert not read(answer).reusable


def test_informational_answers_before_the_answer_are_skipped() -> None:
    """A 100 Continue or a 103 Early Hints is not the answer (RFC 9110 §15.2): the 200 after it is."""
    reader = read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + PLAIN)
    assert (reader.status, reader.headers[0], reader.reusable) == (200, (b"X-Load", b"3"), True)


def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    """A second answer to one request: the first is taken, the connection is not trusted again."""
    reader = read(PLAIN + PLAIN)
    assert (reader.status, reader.headers[0], reader.reusable) == (200, (b"X-Load", b"3"), False)


@pytest.mark.parametrize(
    ("pieces", "detail"),
    [
        ([b"\x00\x01 this is not HTTP at all\r\n\r\n"], "bad response"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", b""], "connection closed mid-response"),
        ([b"HTTP/1.1 200 OK\r\nContent-Le", b""], "connection closed mid-response"),
        ([b""], "connection closed"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"], "bad response"),
        ([b"HTTP/1.1 200 OK\r\nX-Load: 1\r\n folded\r\n\r\n"], "bad response"),
        ([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"], "switched"),
    ],
)
def test_what_is_not_a_health_answer_is_refused(pieces: list[bytes], detail: str) -> None:
    """Garbage, a truncated answer, ambiguous framing, obs-fold, an upgrade: BadAnswer, saying why."""
    reader = AnswerReader()
    with pytest.raises(BadAnswer, match=detail):
        for piece in pieces:
            reader.feed(piece)


def test_body_past_the_limit_is_refused() -> None:
    """A health answer is small: past MAX_HEALTH_BODY the check fails instead of buffering more."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_HEALTH_BODY + 1)
    reader = AnswerReader()
    assert not reader.feed(head + b"x" * MAX_HEALTH_BODY)
    with pytest.raises(BadAnswer, match="too large"):
        reader.feed(b"x")


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_any_bytes_give_an_answer_or_bad_answer(data: bytes, cut: int) -> None:
    """Whatever a backend sends, in any two pieces, the reader answers or raises BadAnswer: nothing else."""
    reader = AnswerReader()
    try:
        for piece in (data[:cut], data[cut:], b""):
            if piece or not reader.done:
                reader.feed(piece)
    except BadAnswer:
        return
    assert reader.done and reader.status >= 200
