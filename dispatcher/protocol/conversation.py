"""One client connection's conversation, without I/O: bytes in, bytes out, when to close, the deadline.

Owns: each connection's h11 state, the answer to each request (chosen by `dispatcher.core.reply`),
keep-alive and close decisions, the refusals (400, 408, 431, 501 ...), request bodies read and dropped,
`Expect: 100-continue`, the deadline the transport must arm next, and the response counters.
Rules: sans-IO, as h11 and hypercorn's protocol/: no trio, no sockets. Time comes from the clock it is
given (trio.current_time in the front door), so tests drive it with plain numbers. The transport
(`dispatcher.net.frontdoor`) feeds `receive` what recv returned, sends what it gives back, then closes
when `closing` says so (lingering when `linger` does) and arms `deadline`; when that passes it sends
`timed_out()` and closes.

The hot path, and why it is shaped so:
- h11 parses every request; answers are not serialised through h11. A redirect is one join of
  four byte strings (status line + Location start, the backend's base, the path, a tail with the
  Date that is rebuilt once a second). Walking h11's state machine for our own answer cost ~15 us
  a request, a fifth of the whole; a fresh h11.Connection for the next request costs 0.7 us, so
  each request gets one, fed with whatever the client sent after the previous request.
- Answers to pipelined requests accumulate and go out in one send when h11 needs more data.
- The deadline moves as little as possible (each move reschedules the transport's cancel scope): a
  head's deadline is armed only when a head arrives in pieces, and the keep-alive deadline moves only
  when it has slipped by 1 %.

Timeouts: a request head must be complete within `header_timeout` of its first byte (or of the
connection's start); an idle keep-alive connection is closed after `keepalive_timeout`; a client
that stops reading our answers runs into the same deadline.

Request bodies are never forwarded or buffered: the 307 goes out as soon as the head is read. With
`Expect: 100-continue` the client has not sent the body and will send it to the backend, so we close.
Otherwise a body up to `max_discard` bytes is read and dropped to keep the connection; a larger one
closes it. Closing while the client may still be sending is a lingering close (send FIN, drain, then
close, as nginx's `lingering_close`), or the kernel's RST could destroy the 307 before it is read:
`linger` says when.

The access log (`dispatcher.expose.access_log`) is fed from here when it is on (`Replies.logging`):
each answer's method, target, version, status, size and chosen backend go to `answered`, for the
transport to log with the client and the time once it has sent them. Off, it costs one test per answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import h11

from dispatcher.core import clientaddr
from dispatcher.core.lifecycle import Lifecycle
from dispatcher.core.pool import Pool
from dispatcher.core.pools import Pools
from dispatcher.core.reply import (
    AUTHORITY,
    REDIRECT_START,
    DateHeader,
    Reply,
    folded,
    head_size,
    path_and_query,
    reply_for,
    screen,
    serialise,
    text_reply,
)
from dispatcher.core.routes import Router
from dispatcher.core.stats import ServerStats
from dispatcher.protocol.refusals import MAX_HEAD, folding_refused, protocol_refusal
from dispatcher.settings.config import Settings

# The first bytes of an empty line: as ints (a byte of a chunk) and as one-byte strings (a slice).
_CRLF = (13, 10)
_CRLF_STARTS = (b"\r", b"\n")
# How long a request that arrived as its connection was being closed may take to be answered.
RESCUE_SECONDS = 1.0

# What the access log is told of one answer: method, target and HTTP version (empty when no request head
# was read), status, bytes sent, and the chosen backend's name (None when none was chosen). No header.
# The last, the client's address when a trusted proxy forwarded it (None: the peer is the client).
Answered = tuple[bytes, bytes, bytes, int, int, str | None, str | None]


def _h11() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)


class Replies:
    """What a front door answers with, shared by all its conversations: the pool's choice, the
    refusals, their counts and the cached Date. `settings` is replaced on reload."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        stats: ServerStats,
        lifecycle: Lifecycle,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.stats = stats
        self.lifecycle = lifecycle
        self.clock = clock
        self._date = DateHeader()
        self.logging = False  # the access log is on: conversations collect `answered`
        # With routes or a hash pool (dispatcher.core.routes): the router answers, reading the head
        # and the client's address. None: the default pool alone, the path with nothing to read.
        self.router: Router | None = None
        self.pools: Pools | None = None  # every pool, for the access log's backend names
        self._names: dict[bytes, str] = {}  # a backend's Location base to its name, for the log
        # The same by scheme://host:port, the longest base first: for a Location whose path a route rewrote.
        self._by_authority: dict[bytes, list[tuple[bytes, str]]] = {}
        self._trusted: tuple[Settings | None, clientaddr.TrustedProxies] = (None, clientaddr.TrustedProxies())

    @property
    def needs_peer(self) -> bool:
        """The client's address is read at accept: for the access log, or for routes and hashing."""
        return self.logging or self.router is not None

    def answer(
        self, conn: h11.Connection, request: h11.Request, maybe_large: bool, peer: str = "-"
    ) -> tuple[bytes, bool]:
        """The bytes of one answer, and whether the connection closes after it."""
        refusal, close = self.screened(request, maybe_large)
        if refusal is not None:
            if refusal.status == 508:
                self.stats.loops += 1
            return self._refusal(refusal, request.method == b"HEAD"), True
        # With Expect: 100-continue the body was not sent: it goes to the backend, and we close.
        close = close or self.lifecycle.shutting_down or conn.they_are_waiting_for_100_continue
        router = self.router
        if router is None:
            reply = reply_for(request.method, request.target, self.pool, self.clock)
        else:
            reply = router.reply(request.method, request.target, request.headers, peer, self.clock())
        kept_1_0 = not close and request.http_version == b"1.0"
        if type(reply) is bytes:
            self.stats.responses[307] += 1
            return reply + self._date.tails(time.time())[2 if kept_1_0 else close], close
        assert isinstance(reply, Reply)
        self.stats.responses[reply.status] = self.stats.responses.get(reply.status, 0) + 1
        close = close or reply.close
        date = self._date.at(time.time())
        return serialise(reply, date, close, request.method == b"HEAD", kept_1_0 and not close), close

    def screened(self, request: h11.Request, maybe_large: bool) -> tuple[Reply | None, bool]:
        """`screen`'s verdict on a head (a refusal or None, and whether to close after the answer),
        with the head's whole size measured when it may be past MAX_HEAD (431)."""
        target = request.target
        refusal, close = screen(request.http_version, target, request.headers, self.settings.max_discard)
        if refusal is None and not target.startswith(b"/"):
            refusal = _absolute_form_refusal(target)
        size = head_size(request.method, target, request.headers) if maybe_large else 0
        if refusal is None and size > MAX_HEAD:
            refusal = text_reply(431, "request header block too large")
        return refusal, close

    def refusal(self, reply: Reply, head: bool = False) -> bytes:
        """An error answer before or instead of a request's head (to a HEAD: without its body); the
        connection closes after it."""
        return self._refusal(reply, head)

    def _refusal(self, reply: Reply, head: bool = False) -> bytes:
        """An error answer (without its body to a HEAD); the connection closes after it. Kept apart
        from `refusal` so that a front door adding to every answer (tlsdoor's HSTS) adds it once."""
        self.stats.responses[reply.status] = self.stats.responses.get(reply.status, 0) + 1
        return serialise(reply, self._date.at(time.time()), close=True, head=head)

    def logged(
        self, request: h11.Request | None, answer: bytes, peer: str = "-", head: bytes = b""
    ) -> Answered:
        """What the access log says of `answer` (to `request`, if its head was read; from `peer`). The
        status is read back from the status line and the backend from the Location, so that the
        answer's own path stays as it is when the log is off. Behind a trusted proxy the client is the
        one routes see (nginx's realip sets `$remote_addr` so, and its log shows that address).
        A refusal without a request (h11 refused the head, or it never ended) logs the request line
        of `head`, what arrived of it, when that line is whole and well formed, as nginx does (a 400
        for a missing Host names its request); else none."""
        if request is None:
            method, target, version = _request_line(head)
            return method, target, version, int(answer[9:12]), len(answer), None, None
        client = self._forwarded_client(peer, request)
        if answer.startswith(REDIRECT_START):
            backend = self._backend_of(request.target, answer)
            return request.method, request.target, request.http_version, 307, len(answer), backend, client
        status = int(answer[9:12])
        return request.method, request.target, request.http_version, status, len(answer), None, client

    def _forwarded_client(self, peer: str, request: h11.Request) -> str | None:
        """The client a trusted proxy forwarded, when it is not the peer itself; None otherwise."""
        if not self.settings.trusted_proxies:
            return None
        if self._trusted[0] is not self.settings:  # a reload may change them
            self._trusted = (self.settings, clientaddr.trusted_of(self.settings))
        client = clientaddr.client_address(peer, request.headers, self._trusted[1])
        return client if client != self._trusted[1].judge(peer)[0] else None

    def _backend_of(self, target: bytes, answer: bytes) -> str | None:
        start = len(REDIRECT_START)
        path = path_and_query(target) or b""  # the Location's end
        location = answer[start : answer.index(b"\r\n", start)]
        base = location[: len(location) - len(path)]
        name = self._names.get(base)
        if name is None:  # a backend this cache has not seen: the pool's backends changed
            backends = self.pools.backends if self.pools is not None else self.pool.backends
            self._names = {backend.location_base: backend.name for backend in backends}
            self._by_authority = {}
            for each, named in sorted(self._names.items(), key=lambda item: -len(item[0])):
                self._by_authority.setdefault(_authority(each), []).append((each, named))
            name = self._names.get(base)
        if name is None:  # a route rewrote the path, or a pool's fallback URL: the longest base that fits
            for each, named in self._by_authority.get(_authority(location), ()):
                if location.startswith(each):
                    return named
        return name


def _authority(url: bytes) -> bytes:
    """`http://h:80` of `http://h:80/prefix/path?q`."""
    scheme, _, rest = url.partition(b"://")
    return scheme + b"://" + rest.split(b"/", 1)[0].split(b"?", 1)[0]


class Conversation:
    """One connection's exchange. After each `receive`, the transport sends what it returned, then:
    `closing` (close now; `linger` first when the client may still be sending), else arms `deadline`.

    `answers` is how many requests the returned bytes answer and `arrived` when their bytes came (the
    request-duration histogram); `idle` says the connection waits between requests (shutdown may end
    it at once, and bytes that beat its deadline are owed an answer: `rescue`).
    """

    __slots__ = (
        "_answered",
        "_conn",
        "_discarded",
        "_head",
        "_head_bytes",
        "_head_deadline",
        "_head_more",
        "_head_start",
        "_kept_alive",
        "_replies",
        "_settings",
        "_slack",
        "answered",
        "answers",
        "arrived",
        "closing",
        "deadline",
        "idle",
        "linger",
        "peer",
        "started",
    )

    def __init__(self, replies: Replies) -> None:
        now = replies.clock()
        self._replies = replies
        self._settings = settings = replies.settings  # a reload applies to the next connections
        self._slack = settings.keepalive_timeout / 100
        self._conn = _h11()
        self._kept_alive = False  # a request was answered and the connection kept
        self._answered = False  # the current request has its answer: no other may be sent for it
        self._discarded = 0  # body bytes of the current request read and dropped
        # Bytes received while a head was being read. h11 bounds only incomplete heads, so a head sent
        # in pieces could pass whole; past MAX_HEAD received, the parsed head is measured.
        self._head_bytes = 0
        # The current head is a HEAD's, as its first bytes say: a refusal of it before h11 could read the
        # method (a 400, 431, 501, 408) has no body either (RFC 9110 §9.3.2).
        self._head = False
        # What arrived of the current head: its first read, and the later ones joined (None: none yet).
        # Read back when h11 refuses its Transfer-Encoding, as h11's error does not say which codings
        # it saw (`_coding_refusal`), and to know whether a read starts a line (`folded`). The first
        # read is held as it came (no copy on the hot path); the rest in one buffer, never one object
        # a read: a client sending a byte at a time makes no more than the head's bytes.
        self._head_start = b""
        self._head_more: bytearray | None = None
        self._head_deadline = now + settings.header_timeout  # the current head's; the first runs from now
        self.deadline = self._head_deadline
        self.arrived = now
        self.answers = 0
        self.closing = False
        self.linger = False
        self.idle = False
        self.started = False  # bytes of the current request have arrived: a timeout deserves a 408
        self.peer = "-"  # the client's address, when the transport read it (Replies.needs_peer)
        # With the access log on, what each answer was, until the transport logs it.
        self.answered: list[Answered] | None = [] if replies.logging else None

    def receive(self, data: bytes) -> bytearray:
        """What the client sent (b"" at its end of stream) → the bytes to send it (maybe none)."""
        conn = self._conn
        self.arrived = now = self._replies.clock()
        waiting = not self.started  # nothing of a request had come before (see _await_more)
        self.answers = 0
        self.idle = False
        self.started = True
        if conn.their_state is h11.IDLE:
            if waiting and data and data[0] in _CRLF:
                # RFC 9112 §2.2: empty lines before a request line are ignored, as some clients
                # send a CRLF after a POST's body. Only where a head would start.
                data = data.lstrip(b"\r\n")
                if not data:
                    self._await_more(conn)
                    return bytearray()
            if waiting:
                self._head = data[:5] == b"HEAD "
                self._head_start, self._head_more, line_start = data, None, False
            else:
                # Else a space mid-line is no fold. The last read only: joining the head at each read
                # would copy it whole each time (a client sending a byte at a time: its square).
                line_start = (self._head_more or self._head_start).endswith(b"\n")
                if self._head_more is None:
                    self._head_more = bytearray()
                self._head_more += data
            self._head_bytes += len(data)
            if folded(data, line_start):
                return self._refuse(bytearray(), folding_refused())
            if waiting and self._kept_alive:
                self._head_deadline = now + self._settings.header_timeout
        conn.receive_data(data)
        # h11's events until it needs more data or the connection ends; the answers they make.
        out = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                refusal = None if self._answered else protocol_refusal(error, conn, self._read_of_head())
                return self._refuse(out, refusal)
            if event is h11.NEED_DATA:
                self._await_more(conn)
                return out
            kind = type(event)
            if kind is h11.Request:
                self._answer(event, out)  # type: ignore[arg-type]
            elif kind is h11.EndOfMessage:
                conn = self._next_request(out)  # the common case: one request, then NEED_DATA on the next
            elif kind is h11.Data:
                self._discard(event)  # type: ignore[arg-type]
            elif kind is h11.ConnectionClosed:
                self.closing = True
            if self.closing:
                return out

    def timed_out(self) -> bytes:
        """The deadline passed: a client stopped in the middle of a head is owed a 408 (RFC 9110
        §15.5.9); one that sent nothing of its next request is closed without a word."""
        if self.started and not self._answered:
            return self._refused(text_reply(408, "request timeout"))
        return b""

    def rescue(self) -> float:
        """The deadline passed on an idle connection just as bytes arrived: the client sent them on a
        connection not yet closed, so they are owed an answer. The deadline for it, to arm now."""
        self._head_deadline = self.deadline = self._replies.clock() + RESCUE_SECONDS
        self._kept_alive = False  # its head keeps this deadline, as a connection's first head does
        return self.deadline

    def _read_of_head(self) -> bytes:
        """What arrived of the current head so far."""
        more = self._head_more
        return self._head_start if more is None else self._head_start + more

    def _await_more(self, conn: h11.Connection) -> None:
        """h11 needs more bytes: wait for them, or close a kept-alive connection at shutdown."""
        waiting = conn.their_state is h11.IDLE and not conn.trailing_data[0]
        self.idle = waiting and self._kept_alive
        self.started = not waiting
        if self.idle and self._replies.lifecycle.shutting_down:
            # Closed between requests; a new connection still gets its first request read (it was
            # accepted: its client is owed an answer).
            self.closing = True
        elif not waiting and conn.their_state is h11.IDLE:
            self.deadline = self._head_deadline  # a head in pieces: its own deadline applies

    def _answer(self, request: h11.Request, out: bytearray) -> None:
        self._answered = True
        self.answers += 1
        answer, close = self._replies.answer(self._conn, request, self._head_bytes > MAX_HEAD, self.peer)
        out += answer
        if self.answered is not None:
            self.answered.append(self._replies.logged(request, answer, self.peer))
        if close:
            self.closing = self.linger = True
        self._discarded = self._head_bytes = 0

    def _next_request(self, out: bytearray) -> h11.Connection:
        """The request is complete: a fresh h11 connection takes what the client sent after it."""
        leftover, closed = self._conn.trailing_data
        conn = self._conn = _h11()
        if leftover[:1] in _CRLF_STARTS:  # empty lines before the next request line (RFC 9112 §2.2)
            leftover = leftover.lstrip(b"\r\n")
        self._head = leftover[:5] == b"HEAD "
        self._head_start, self._head_more = leftover, None
        if leftover:
            if folded(leftover, False):  # a pipelined head: scanned before h11 unfolds it
                self._refuse(out, folding_refused())
                return conn
            conn.receive_data(leftover)
        if closed:
            conn.receive_data(b"")
        self._answered = False
        self._kept_alive = True
        arrived, settings = self.arrived, self._settings
        self._head_deadline = arrived + settings.header_timeout  # a pipelined head started here
        idle_deadline = arrived + settings.keepalive_timeout
        if not idle_deadline - self._slack < self.deadline <= idle_deadline:
            self.deadline = idle_deadline
        return conn

    def _discard(self, data: h11.Data) -> None:
        self._discarded += len(data.data)
        if self._discarded > self._settings.max_discard:  # a chunked body that grew too large
            self.closing = self.linger = True

    def _refuse(self, out: bytearray, reply: Reply | None) -> bytearray:
        """`out` and then `reply`'s bytes, if any; the connection closes, lingering."""
        if reply is not None:
            out += self._refused(reply)
        self.closing = self.linger = True
        return out

    def _refused(self, reply: Reply) -> bytes:
        """A refusal before or instead of a request's head: what the log names is its request line,
        if that arrived whole (`Replies.logged`)."""
        answer = self._replies.refusal(reply, self._head)
        if self.answered is not None:
            self.answered.append(self._replies.logged(None, answer, head=self._read_of_head()))
        return answer


# A request line as RFC 9112 §3 has it: a token, one space, a target of visible bytes, one space,
# HTTP/d.d. Only such a line is logged for a refused head; anything else is `-`.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r?")


def _request_line(head: bytes) -> tuple[bytes, bytes, bytes]:
    """The method, target and version of a head's first line when it is whole and well formed;
    three empty strings otherwise."""
    line, newline, _ = head.partition(b"\n")
    found = _REQUEST_LINE.fullmatch(line) if newline else None
    return (found[1], found[2], found[3]) if found else (b"", b"", b"")


def _absolute_form_refusal(target: bytes) -> Reply | None:
    """400 for an absolute-form target (RFC 9112 §3.2.2: its authority is the request's host, and
    Host is ignored) whose scheme is not http or https, or whose authority is not a host and a port:
    empty (RFC 9110 §4.2.1: a recipient MUST reject an http URI without a host), with userinfo (RFC
    9110 §4.2.4: SHOULD be treated as an error), a port not of digits, an unclosed bracket. None for
    a valid one and for targets of other forms (`*`, CONNECT's `host:port`: `reply_for`'s to answer).
    The authority ends where `path_and_query` starts the path: at the first `/` or `?`."""
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        return None
    if scheme.lower() not in (b"http", b"https"):
        return text_reply(400, "absolute-form target: only http and https are served")
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
    if b"@" in authority:
        return text_reply(400, "userinfo in the target refused (RFC 9110 4.2.4)")
    if AUTHORITY.fullmatch(authority) is None:
        return text_reply(400, "invalid host or port in the target (RFC 9110 4.2.1)")
    return None
