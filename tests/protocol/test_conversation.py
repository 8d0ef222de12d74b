"""The front door's conversation without sockets: bytes in, bytes out, the close and the deadline.

Time is a plain number the test moves (`Clock`), so every deadline is asserted exactly; the transport's
behaviour over real loopback sockets is tests/net/test_frontdoor.py's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import CheckResult, Pool
from dispatcher.core.stats import RESPONSE_CODES, ServerStats
from dispatcher.protocol.conversation import MAX_HEAD, RESCUE_SECONDS, Conversation, Replies
from dispatcher.settings.config import HealthSettings, Settings, parse_backend
from tests.helpers import RawResponse, parse_responses

BACKEND = "http://10.0.0.1:8080"
START = 100.0
HEADER_TIMEOUT = 7.0
KEEPALIVE_TIMEOUT = 20.0
MAX_DISCARD = 1000


@dataclass
class Clock:
    """The conversation's clock: the test sets `now`."""

    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Talk:
    """A conversation with its clock, counters and lifecycle at hand."""

    clock: Clock = field(default_factory=Clock)
    stats: ServerStats = field(default_factory=ServerStats)
    lifecycle: Lifecycle = field(default_factory=lambda: Lifecycle(serving=True))
    settings: Settings = field(
        default_factory=lambda: Settings(
            header_timeout=HEADER_TIMEOUT, keepalive_timeout=KEEPALIVE_TIMEOUT, max_discard=MAX_DISCARD
        )
    )
    conversation: Conversation = field(init=False)
    pool: Pool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = pool = Pool([parse_backend("t", BACKEND, "b")], HealthSettings(interval=2.0))
        pool.record_check(pool.backends[0], CheckResult(True, 0.0, load=0.0), now=0.0)
        replies = Replies(self.settings, pool, self.stats, self.lifecycle, self.clock)
        self.conversation = Conversation(replies)

    def send(self, data: bytes, at: float | None = None) -> list[RawResponse]:
        """The client sends `data` (at time `at`): the answers it gets, all of them whole."""
        if at is not None:
            self.clock.now = at
        responses, rest = parse_responses(bytes(self.conversation.receive(data)))
        assert rest == b""
        return responses


def get(target: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A raw request head."""
    return "\r\n".join([f"{method} {target} HTTP/{version}", "Host: f", *headers, "", ""]).encode()


def locations(responses: list[RawResponse]) -> list[bytes | None]:
    return [response.header(b"location") for response in responses]


def test_a_request_gets_a_307_and_the_connection_stays_open() -> None:
    """One GET: a 307 to the backend with the path and query, no close, one answer counted."""
    talk = Talk()
    [response] = talk.send(get("/a?b=c"))
    assert (response.status, response.closes) == (307, False)
    assert locations([response]) == [f"{BACKEND}/a?b=c".encode()]
    conversation = talk.conversation
    assert (conversation.closing, conversation.answers, conversation.arrived) == (False, 1, START)
    assert talk.stats.responses[307] == 1


def test_keep_alive_answers_each_request_and_arms_the_idle_deadline() -> None:
    """Requests one after another are each answered; the deadline is keepalive_timeout after the last."""
    talk = Talk()
    for i in range(3):
        [response] = talk.send(get(f"/r{i}"), at=START + 5 * i)
        assert locations([response]) == [f"{BACKEND}/r{i}".encode()]
        assert talk.conversation.deadline == START + 5 * i + KEEPALIVE_TIMEOUT
    assert not talk.conversation.closing and talk.conversation.idle


def test_pipelined_requests_are_answered_in_order_in_one_output() -> None:
    """Requests in one read are answered in order in one output, counted as that many answers."""
    talk = Talk()
    responses = talk.send(b"".join(get(f"/p{i}") for i in range(4)))
    assert locations(responses) == [f"{BACKEND}/p{i}".encode() for i in range(4)]
    assert talk.conversation.answers == 4 and not talk.conversation.closing


def test_a_pipelined_head_cut_by_the_read_is_completed_by_the_next() -> None:
    """A pipelined second head split across reads is answered once its rest arrives."""
    talk = Talk()
    second = get("/two")
    assert locations(talk.send(get("/one") + second[:10])) == [f"{BACKEND}/one".encode()]
    assert not talk.conversation.idle  # part of a head is waiting: not idle
    assert locations(talk.send(second[10:])) == [f"{BACKEND}/two".encode()]


def test_connection_close_closes_after_the_answer() -> None:
    """`Connection: close`: the 307 says close, and the conversation closes, lingering."""
    talk = Talk()
    [response] = talk.send(get("/x", "Connection: close"))
    assert (response.status, response.closes) == (307, True)
    assert (talk.conversation.closing, talk.conversation.linger) == (True, True)


def test_http10_closes_after_the_answer() -> None:
    """An HTTP/1.0 request gets its 307 with close."""
    talk = Talk()
    [response] = talk.send(get("/old", version="1.0"))
    assert (response.status, response.closes, talk.conversation.closing) == (307, True, True)


def test_http10_keep_alive_is_kept_and_said() -> None:
    """HTTP/1.0 with `Connection: keep-alive` (ApacheBench -k): each answer says keep-alive, and the
    connection serves the next request (RFC 9112 §9.3); a 503 too."""
    talk = Talk()
    for target in ("/one", "/two"):
        [response] = talk.send(get(target, "Connection: keep-alive", version="1.0"))
        assert (response.status, response.header(b"connection")) == (307, b"keep-alive")
        assert not talk.conversation.closing
    talk.pool.set_maintenance(True)
    [response] = talk.send(get("/three", "Connection: Keep-Alive", version="1.0"))
    assert (response.status, response.header(b"connection")) == (503, b"keep-alive")


def test_empty_lines_before_a_request_line_are_ignored() -> None:
    """RFC 9112 §2.2: CRLFs before a request line (a first one, one after a POST's body in the same
    read or on their own) are skipped, not a 400."""
    talk = Talk()
    assert locations(talk.send(b"\r\n\r\n" + get("/first"))) == [f"{BACKEND}/first".encode()]
    post = get("/form", "Content-Length: 3", method="POST") + b"a=b\r\n"
    assert locations(talk.send(post + get("/after"))) == [
        f"{BACKEND}/form".encode(),
        f"{BACKEND}/after".encode(),
    ]
    assert talk.send(b"\r\n") == [] and talk.conversation.idle and not talk.conversation.closing
    assert locations(talk.send(get("/last"))) == [f"{BACKEND}/last".encode()]


def test_end_of_stream_between_requests_closes_without_lingering() -> None:
    """The client's FIN after its answers: close at once, nothing sent, no lingering."""
    talk = Talk()
    talk.send(get("/x"))
    assert talk.send(b"") == []
    assert (talk.conversation.closing, talk.conversation.linger) == (True, False)


def test_malformed_request_gets_400_and_closes() -> None:
    """Bytes that are not a request: 400 Bad Request with close, lingering."""
    talk = Talk()
    [response] = talk.send(b"this is not http\r\n\r\n")
    assert (response.status, response.reason, response.closes) == (400, b"Bad Request", True)
    assert (talk.conversation.closing, talk.conversation.linger) == (True, True)
    assert talk.stats.responses[400] == 1


def test_folded_header_line_gets_400() -> None:
    """An obs-fold header line (RFC 9112 §5.2) is refused with 400, not unfolded."""
    talk = Talk()
    [response] = talk.send(b"GET / HTTP/1.1\r\nHost: f\r\nX: a\r\n b\r\n\r\n")
    assert (response.status, response.closes, talk.conversation.closing) == (400, True, True)


def test_a_head_split_after_a_colon_is_no_fold() -> None:
    """A read that starts with a space continues a line, unless the read before it ended one: a
    head cut by TCP between `Host:` and ` f` is an ordinary head, a line that starts with a space
    after a cut at the line's end is a fold."""
    talk = Talk()
    assert talk.send(b"GET / HTTP/1.1\r\nHost:") == []
    [response] = talk.send(b" f\r\n\r\n")
    assert response.status == 307
    talk = Talk()
    assert talk.send(b"GET / HTTP/1.1\r\nHost: f\r\nX: a\r\n") == []
    [response] = talk.send(b" b\r\n\r\n")
    assert (response.status, response.closes) == (400, True)


def test_folded_pipelined_head_gets_400_after_the_first_answer() -> None:
    """A folded head pipelined behind a good one: the 307 first, then 400 and close."""
    talk = Talk()
    responses = talk.send(get("/ok") + b"GET / HTTP/1.1\r\nHost: f\r\nX: a\r\n\tb\r\n\r\n")
    assert [r.status for r in responses] == [307, 400] and talk.conversation.closing


def test_oversized_head_in_one_read_gets_431() -> None:
    """A head over 16 KiB in one read: 431 and close."""
    talk = Talk()
    [response] = talk.send(get("/", "X-Big: " + "a" * MAX_HEAD))
    assert (response.status, response.reason) == (431, b"Request Header Fields Too Large")
    assert response.closes and talk.conversation.closing


def test_a_request_line_past_the_head_limit_gets_414() -> None:
    """A target longer than the whole head limit: 414 URI Too Long, not 431 (RFC 9112 §3)."""
    talk = Talk()
    [response] = talk.send(get("/" + "a" * MAX_HEAD))
    assert (response.status, response.reason, talk.conversation.closing) == (414, b"URI Too Long", True)
    talk = Talk()  # the line still unfinished when h11's bound is passed, in two reads
    assert talk.send(b"GET /" + b"a" * 10_000) == []
    [response] = talk.send(b"a" * 10_000)
    assert (response.status, talk.conversation.closing) == (414, True)


def test_refusals_of_a_head_request_carry_no_body() -> None:
    """A HEAD refused after its head was read (505, 508, 414) gets the status without a body."""
    for head, status in [
        (get("/", method="HEAD", version="2.0"), 505),
        (get("/", "X-Dispatcher-Check: 1", method="HEAD"), 508),
        (get("/" + "a" * 9000, method="HEAD"), 414),
        # Refused before h11 gave the method: known from the head's first bytes.
        (b"HEAD / HTTP/1.1\r\n\r\n", 400),  # no Host
        (get("/", "X: a", " b", method="HEAD"), 400),  # obs-fold
        (get("/", "Transfer-Encoding: gzip, chunked", method="HEAD"), 501),
        (get("/", "Transfer-Encoding: gzip", method="HEAD"), 400),
        (b"\r\n" + get("/", "Content-Length: abc", method="HEAD"), 400),
    ]:
        raw = bytes(Talk().conversation.receive(head))
        [response], rest = parse_responses(raw, bodyless=True)
        assert (response.status, response.body, rest) == (status, b"", b"")


def test_transfer_encoding_in_http10_gets_400() -> None:
    """Transfer-Encoding in an HTTP/1.0 request is faulty framing (RFC 9112 §6.1): 400 and close."""
    [response] = Talk().send(get("/", "Transfer-Encoding: chunked", method="POST", version="1.0"))
    assert (response.status, response.closes) == (400, True)


def test_an_unknown_transfer_coding_gets_501_saying_so() -> None:
    """`Transfer-Encoding: gzip, chunked` (chunked last, after a coding not ours): 501 naming the coding."""
    [response] = Talk().send(get("/", "Transfer-Encoding: gzip, chunked", method="POST"))
    assert (response.status, response.closes) == (501, True) and b"transfer coding" in response.body


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        (["Transfer-Encoding: gzip"], 400, b"final coding is not chunked"),
        (["Transfer-Encoding: chunked, gzip"], 400, b"final coding is not chunked"),
        (["Transfer-Encoding: CHUNKED , Gzip;q=1"], 400, b"final coding is not chunked"),
        (["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"], 400, b"final coding is not chunked"),
        (["Transfer-Encoding: "], 400, b"final coding is not chunked"),
        (["Transfer-Encoding: chunked, chunked"], 400, b"more than once"),
        (["Transfer-Encoding: chunked", "Transfer-Encoding: Chunked"], 400, b"more than once"),
        (["Transfer-Encoding: gzip, chunked", "Content-Length: 3"], 400, b"Content-Length"),
        (["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], 501, b"transfer coding"),
        (["Transfer-Encoding: x-custom ; a=1, chunked"], 501, b"transfer coding"),
    ],
    ids=[
        "gzip",
        "chunked-gzip",
        "any-case-with-parameter",
        "two-lines-chunked-first",
        "empty",
        "chunked-twice",
        "chunked-twice-in-two-lines",
        "with-content-length",
        "two-lines-chunked-last",
        "unknown-then-chunked",
    ],
)
def test_transfer_codings_h11_refuses_get_400_or_501_by_where_chunked_is(
    fields: list[str], status: int, reason: bytes
) -> None:
    """Chunked not last or twice: 400 (RFC 9112 §6.3, §7.1); chunked last after another coding: 501."""
    talk = Talk()
    [response] = talk.send(get("/", *fields, method="POST"))
    assert (response.status, response.closes, talk.conversation.closing) == (status, True, True)
    assert reason in response.body


def test_transfer_coding_of_a_head_in_pieces_and_pipelined_is_read_whole() -> None:
    """The codings are read from the whole head, whether it came in pieces or after another request."""
    head = get("/", "X-A: 1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", method="POST")
    talk = Talk()
    assert talk.send(head[:20]) == [] and talk.send(head[20:50]) == []
    [response] = talk.send(head[50:])
    assert (response.status, b"more than once" in response.body) == (400, True)
    talk = Talk()
    first = get("/first")
    [redirect] = talk.send(first + head[:28])
    [response] = talk.send(head[28:])
    assert (redirect.status, response.status, b"more than once" in response.body) == (307, 400, True)


def test_transfer_coding_in_http10_not_chunked_alone_gets_400() -> None:
    """`gzip, chunked` in HTTP/1.0 is faulty framing too (RFC 9112 §6.1), as chunked alone is: 400."""
    [response] = Talk().send(get("/", "Transfer-Encoding: gzip, chunked", method="POST", version="1.0"))
    assert (response.status, response.closes) == (400, True)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http:///x", b"invalid host"),
        ("http://:80/x", b"invalid host"),
        ("http://?q", b"invalid host"),
        ("http://[::1/x", b"invalid host"),
        ("http://[::1/x]/", b"invalid host"),
        ("http://h]/", b"invalid host"),
        ("http://h:x/", b"invalid host"),
        ("http://h:80:81/", b"invalid host"),
        ("http://h#f/", b"invalid host"),
        ("http://h\\x/", b"invalid host"),
        ("http://h%zz/", b"invalid host"),
        ("http://u@h/", b"userinfo"),
        ("https://u:p@h:443/x", b"userinfo"),
        ("ftp://h/x", b"only http and https"),
        ("ws://h/x", b"only http and https"),
    ],
)
def test_absolute_form_target_with_a_bad_authority_or_scheme_gets_400(target: str, reason: bytes) -> None:
    """An absolute target's authority is a host and port (RFC 9110 §4.2.1, §4.2.4); else 400, no redirect."""
    talk = Talk()
    [response] = talk.send(get(target))
    assert (response.status, response.header(b"location"), response.closes) == (400, None, True)
    assert reason in response.body and talk.stats.responses[400] == 1


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("http://h/a/b?c=d", "/a/b?c=d"),
        ("HTTPS://H.example:8443?q", "/?q"),
        ("http://h:/p", "/p"),
        ("http://[::1]:80/v6?x=1", "/v6?x=1"),
        ("http://[v1.fe]/f", "/f"),
        ("http://h%41b.example/e", "/e"),
        ("http://10.0.0.9", "/"),
    ],
)
def test_absolute_form_target_with_a_valid_authority_is_redirected_with_path_and_query(
    target: str, path: str
) -> None:
    """A valid absolute target (RFC 9112 §3.2.2) is redirected with its path and query kept, kept alive."""
    [response] = Talk().send(get(target))
    assert (response.status, response.closes) == (307, False)
    assert locations([response]) == [f"{BACKEND}{path}".encode()]


def test_an_invalid_or_repeated_host_gets_400() -> None:
    """A Host with a space, a slash or an @, or two Host fields: 400 (RFC 9112 §3.2), no redirect. So
    is a port without a host, and a bracket that holds no IP literal (RFC 3986 §3.2.2; nginx's 400)."""
    invalid = (["Host: a b"], ["Host: a/b"], ["Host: user@a"], ["Host: a", "Host: b"], ["Host: :80"])
    bad_ports = (["Host: a:x"], ["Host: a:80:90"], ["Host: [::1"], ["Host: a]"], ["Host: []"], ["Host: [zz]"])
    for fields in (*invalid, *bad_ports):
        head = "\r\n".join(["GET / HTTP/1.1", *fields, "", ""]).encode()
        [response] = Talk().send(head)
        assert (response.status, response.closes) == (400, True), fields
    for host in (b"[::1]:8080", b"[::1]", b"a:", b"example.com:443", b"[v1.fe]:80", b"", b"a%41:1"):
        [response] = Talk().send(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert response.status == 307, host


def test_bytes_no_uri_may_hold_are_percent_encoded_in_the_location() -> None:
    """`#`, quotes, angle brackets, braces, `|`, `^`, backtick and backslash reach the Location
    percent-encoded; `[` and `]` (raw in browsers' queries) as they came."""
    [response] = Talk().send(get('/a#b"<>{}|^`\\?q[]=1'))
    assert locations([response]) == [f"{BACKEND}/a%23b%22%3C%3E%7B%7D%7C%5E%60%5C?q[]=1".encode()]
    # A `%` that begins no escape is itself encoded; a good escape is kept as it came.
    [response] = Talk().send(get("/%zz/a%2?q=%41%"))
    assert locations([response]) == [f"{BACKEND}/%25zz/a%252?q=%41%25".encode()]


def test_oversized_head_in_pieces_gets_431() -> None:
    """A head over 16 KiB in two reads, each under h11's bound: measured whole, 431."""
    talk = Talk()
    head = get("/", *(f"X-H{i}: {'v' * 90}" for i in range(180)))
    assert len(head) > MAX_HEAD
    assert talk.send(head[:16000]) == []
    [response] = talk.send(head[16000:])
    assert (response.status, talk.conversation.closing) == (431, True)


def test_silent_connection_times_out_without_a_word() -> None:
    """A connection that sends nothing: deadline header_timeout after its start, then a silent close."""
    talk = Talk()
    assert talk.conversation.deadline == START + HEADER_TIMEOUT
    assert talk.conversation.timed_out() == b""


def test_slow_head_gets_408_at_its_header_deadline() -> None:
    """Half a head on a new connection: the deadline stays header_timeout after the start, then 408."""
    talk = Talk()
    assert talk.send(b"GET /slow HTTP/1.1\r\nHost: f\r\n", at=START + 3) == []
    assert talk.conversation.deadline == START + HEADER_TIMEOUT
    responses, rest = parse_responses(talk.conversation.timed_out())
    assert [(r.status, r.reason, r.closes) for r in responses] == [(408, b"Request Timeout", True)]
    assert rest == b"" and talk.stats.responses[408] == 1


def test_next_head_after_an_idle_pause_gets_header_timeout_from_its_first_byte() -> None:
    """After a kept-alive pause, half a head arms header_timeout from its first byte; then 408."""
    talk = Talk()
    talk.send(get("/one"))
    assert talk.send(b"GET /two HTTP/1.1\r\n", at=START + 15) == []
    assert talk.conversation.deadline == START + 15 + HEADER_TIMEOUT
    assert parse_responses(talk.conversation.timed_out())[0][0].status == 408


def test_idle_keep_alive_times_out_silently() -> None:
    """An idle kept-alive connection reaching its deadline is closed with nothing sent."""
    talk = Talk()
    talk.send(get("/ka"))
    assert talk.conversation.deadline == START + KEEPALIVE_TIMEOUT
    assert talk.conversation.timed_out() == b""


def test_keep_alive_deadline_moves_only_when_slipped_by_one_percent() -> None:
    """A request within 1 % of keepalive_timeout of the last leaves the deadline; a later one moves it."""
    talk = Talk()
    talk.send(get("/a"))
    talk.send(get("/b"), at=START + KEEPALIVE_TIMEOUT / 200)
    assert talk.conversation.deadline == START + KEEPALIVE_TIMEOUT
    talk.send(get("/c"), at=START + 1)
    assert talk.conversation.deadline == START + 1 + KEEPALIVE_TIMEOUT


def test_small_body_is_discarded_and_the_connection_kept() -> None:
    """A body within max_discard, in pieces: dropped; the next request on the connection is answered."""
    talk = Talk()
    body = b"x" * (MAX_DISCARD - 1)
    [first] = talk.send(get("/up", f"Content-Length: {len(body)}", method="POST") + body[:100])
    assert (first.status, first.closes) == (307, False)
    assert talk.send(body[100:]) == []
    assert locations(talk.send(get("/next"))) == [f"{BACKEND}/next".encode()]
    assert not talk.conversation.closing


def test_body_over_max_discard_gets_307_with_close() -> None:
    """A Content-Length over max_discard: the 307 says close, and the conversation lingers."""
    talk = Talk()
    [response] = talk.send(get("/big", f"Content-Length: {MAX_DISCARD + 1}", method="POST"))
    assert (response.status, response.closes) == (307, True)
    assert (talk.conversation.closing, talk.conversation.linger) == (True, True)


def test_max_discard_0_closes_on_any_body_and_keeps_an_empty_one() -> None:
    """`--max-discard 0`: one byte of body closes; `Content-Length: 0` keeps the connection."""
    talk = Talk(
        settings=Settings(header_timeout=HEADER_TIMEOUT, keepalive_timeout=KEEPALIVE_TIMEOUT, max_discard=0)
    )
    [empty] = talk.send(get("/empty", "Content-Length: 0", method="POST"))
    assert (empty.status, empty.closes) == (307, False)
    [response] = talk.send(get("/one", "Content-Length: 1", method="POST"))
    assert (response.status, response.closes) == (307, True)


def test_a_chunked_body_gets_307_with_close() -> None:
    """A chunked body's size is unknown when the 307 goes out: it says close, then lingers (drains)."""
    talk = Talk()
    [response] = talk.send(get("/chunks", "Transfer-Encoding: chunked", method="POST"))
    assert (response.status, response.closes) == (307, True)
    assert (talk.conversation.closing, talk.conversation.linger) == (True, True)


def test_expect_100_continue_gets_307_with_close_and_no_100() -> None:
    """`Expect: 100-continue`: the body was not sent, so a 307 with close and no interim 100."""
    talk = Talk()
    head = get("/up", "Content-Length: 500", "Expect: 100-continue", method="POST")
    [response] = talk.send(head)
    assert (response.status, response.closes, talk.conversation.closing) == (307, True, True)


def test_answers_close_while_shutting_down() -> None:
    """While the lifecycle says shutting down, a new connection's request is answered, with close."""
    talk = Talk()
    talk.lifecycle.shutting_down = True
    [response] = talk.send(get("/late"))
    assert (response.status, response.closes, talk.conversation.closing) == (307, True, True)


def test_connection_that_falls_idle_during_shutdown_closes_without_lingering() -> None:
    """Shutdown begins while a body is being dropped: once it ends, the kept-alive connection closes."""
    talk = Talk()
    [response] = talk.send(get("/up", "Content-Length: 10", method="POST") + b"12345")
    assert not response.closes
    talk.lifecycle.shutting_down = True
    assert talk.send(b"67890") == []
    assert (talk.conversation.closing, talk.conversation.linger) == (True, False)


def test_rescued_request_gets_its_own_short_deadline_then_keep_alive() -> None:
    """Bytes that beat an idle deadline are answered: RESCUE_SECONDS for their head, then keep-alive."""
    talk = Talk()
    talk.send(get("/one"))
    talk.clock.now = START + KEEPALIVE_TIMEOUT
    assert talk.conversation.rescue() == START + KEEPALIVE_TIMEOUT + RESCUE_SECONDS
    assert talk.send(b"GET /two HTTP/1.1\r\n") == []
    assert talk.conversation.deadline == START + KEEPALIVE_TIMEOUT + RESCUE_SECONDS
    assert locations(talk.send(b"Host: f\r\n\r\n")) == [f"{BACKEND}/two".encode()]
    assert talk.conversation.deadline == START + 2 * KEEPALIVE_TIMEOUT


def test_connect_gets_405_and_options_star_200() -> None:
    """Answers that are not redirects come from the reply choice: CONNECT 405 (close), OPTIONS * 200."""
    talk = Talk()
    [options] = talk.send(get("*", method="OPTIONS"))
    [connect] = talk.send(get("example.com:443", method="CONNECT"))
    assert [(r.status, r.closes) for r in (options, connect)] == [(200, False), (405, True)]


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_any_bytes_in_any_pieces_then_end_of_stream_close_cleanly(data: bytes, cuts: list[int]) -> None:
    """Any bytes, read in any pieces, then end of stream: whole answers of known statuses, then a close."""
    assume(b"HEAD" not in data)  # answers to HEAD announce a body they do not carry
    talk = Talk()
    raw = b""
    points = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    for start, end in [*itertools.pairwise(points), (len(data), len(data))]:
        if talk.conversation.closing:
            break
        raw += bytes(talk.conversation.receive(data[start:end]))
    assert talk.conversation.closing
    responses, rest = parse_responses(raw)
    assert rest == b"" and {r.status for r in responses} <= set(RESPONSE_CODES)


def test_the_access_log_names_the_backend_of_a_rewritten_redirect_and_none_for_a_fallback_url() -> None:
    """A route that rewrote the path still names its backend in the log (the longest base that the
    Location starts with, among those of its host); a pool's fallback URL names none."""
    pool = Pool(
        [
            parse_backend("b", "http://10.0.0.1:80", "short"),
            parse_backend("b", "http://10.0.0.1:80/app", "long"),
        ],
        HealthSettings(),
    )
    replies = Replies(Settings(), pool, ServerStats(), Lifecycle(), lambda: 0.0)
    request = h11.Request(method="GET", target="/w/x?y=1", headers=[("host", "t")])
    rewritten = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://10.0.0.1:80/app/v2/x?y=1\r\n\r\n"
    assert replies.logged(request, rewritten)[5] == "long"
    other = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://10.0.0.1:80/v2/x?y=1\r\n\r\n"
    assert replies.logged(request, other)[5] == "short"
    sorry = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: https://sorry.example.com/\r\n\r\n"
    assert replies.logged(request, sorry)[5] is None
