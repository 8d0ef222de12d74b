"""Reading health answers: the bytes of one check's response in, its status, headers and body out.

Owns: the parse of health answers (llhttp, through httptools), their limits, and the verdict on
whether the connection can carry the next check.
Rules: sans-IO: no sockets, no trio, no clock. It must not import the rest of the package; the sweep
(bytes from its own epoll set) and a check over TLS (bytes from an SSLStream) both feed it.

Why llhttp and not h11, which the front door uses: a pool of 1,000 backends checked every 2 s is 500
answers a second read on the front door's one core. h11 took 80-90 us of pure Python to read one
(its state machine and events cost more than the parse); llhttp, the parser of Node.js, reads one in
1.5-2 us with the same strictness (obs-fold, bad framing, bad header bytes are errors). At that rate
the checks' parsing alone cost the front door about 4 % of its requests a second (issue 5, goal 2).

One reader per connection: llhttp keeps the connection's state between answers (after a kept-alive
answer it expects the next one). `begin()` clears what one check collected.

A load stream (issue 6): a `200` whose Content-Type is `text/event-stream`, without a Content-Length,
is whole as soon as its head is (`streaming`); llhttp goes on taking its body apart (chunked, or until
the close) and the body's bytes collect in `stream` for the event parser (`sse`), unbounded here
because that parser bounds what it holds; `ended` once the body or the connection ends.
"""

from __future__ import annotations

import httptools

# A health response is small; anything past this is not kept (the check fails as `protocol`).
MAX_HEALTH_BODY = 64 * 1024


def is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """The answer's Content-Type is `text/event-stream`. With a Content-Length it is no stream but a
    whole body of events (Flask's `Response("data: 3\\n\\n", mimetype="text/event-stream")`): read as a
    polled answer, its last event the report, rather than as a stream that ends at once every time."""
    return any(
        name.lower() == b"content-type" and value.lower().lstrip().startswith(b"text/event-stream")
        for name, value in headers
    )


class BadAnswer(Exception):
    """The bytes are not a health answer (always the check's `protocol` failure)."""


class AnswerReader:
    """One connection's health answers, as llhttp's callbacks hand them over.

    A check reads one answer; informational (1xx) answers before it are skipped, as RFC 9110 §15.2
    says a client must. Header names are as the backend sent them (`report` lower-cases them). Each
    callback is a Python call made from C: one per header, two at the end, and one per piece of body.
    """

    __slots__ = (
        "_begun",
        "_cut",
        "_headed",
        "_keep_alive",
        "_parser",
        "_too_large",
        "body",
        "done",
        "ended",
        "extra",
        "headers",
        "status",
        "stream",
        "streaming",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False  # the answer is whole
        self.extra = False  # bytes came after the answer: the backend speaks out of turn
        self._keep_alive = False
        self._too_large = False
        self._begun = False  # bytes of this answer arrived
        self._cut = False  # a failed answer decided at its head, its body not yet ended
        self._headed = False  # its head is complete
        self.streaming = False  # the answer is a load stream
        self.stream = bytearray()  # its body's bytes not yet taken
        self.ended = False  # the stream's body or connection ended

    def begin(self) -> None:
        """A new check on this connection: forget what the last one read."""
        self.status, self.headers, self.body = 0, [], b""
        self.done = self._too_large = self._begun = self._headed = self._cut = False

    def take(self) -> bytes:
        """The load stream's body bytes that arrived since the last take."""
        data = bytes(self.stream)
        self.stream.clear()
        return data

    def feed(self, data: bytes) -> bool:
        """Take bytes received (b"" at the end of the stream); True once the answer is whole.
        Raises BadAnswer for bytes that are not a health answer."""
        if not data:
            return self._end_of_stream()
        self._begun = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise BadAnswer("bad response: the backend switched protocols") from None
        except httptools.HttpParserError as error:
            raise BadAnswer(f"bad response: {error}") from None
        if self._too_large:
            raise BadAnswer("health response body too large")
        return self.done

    @property
    def reusable(self) -> bool:
        """The answer is whole and the connection may carry the next check (HTTP/1.1 keep-alive, no
        `Connection: close`, nothing sent out of turn)."""
        return self.done and self._keep_alive and not self.extra and not self.streaming and not self._cut

    def _end_of_stream(self) -> bool:
        """The backend closed: that ends an answer whose body had no length (RFC 9112 §6.3, 8.)."""
        if self.streaming:
            self.ended = True
            return True
        if self.done:
            return True
        framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        if self._headed and not framed and self._parser.get_status_code() >= 200:
            self.status, self.done, self._keep_alive = self._parser.get_status_code(), True, False
            return True
        raise BadAnswer("connection closed mid-response" if self._begun else "connection closed")

    # --- llhttp's callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:  # the head of a second answer to one request
            self.extra = True
        else:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headed = True
        status = self._parser.get_status_code()
        if not self.done and status >= 300:
            # A failed check is decided by its status; its body is not kept (`judge` reads none), so
            # that a 503 whose body never ends (an event stream, a slow page) fails as a 503 now, not
            # as a timeout later. The connection is kept only if the body ended in the same bytes
            # (`on_message_complete`); else it goes with the rest of the body (`reusable`).
            self.status, self.done, self._cut = status, True, True
            return
        if self.done or status != 200:
            return
        if is_event_stream(self.headers) and not any(n.lower() == b"content-length" for n, _ in self.headers):
            self.status, self.done, self.streaming = 200, True, True

    def on_body(self, data: bytes) -> None:
        if self._cut:
            return
        if self.streaming:
            self.stream += data
        elif len(self.body) + len(data) > MAX_HEALTH_BODY:
            self._too_large = True
        elif not self.done:
            self.body += data

    def on_message_complete(self) -> None:
        if self._cut:  # the failed answer's body ended: the connection may carry the next check
            self._cut, self._keep_alive = False, self._parser.should_keep_alive()
            return
        if self.streaming:
            self.ended = True
            return
        if self.done:
            self.extra = True
            return
        status = self._parser.get_status_code()
        if status < 200:  # a 100 or 103 before the answer: read on
            self.begin()
        else:
            self.status, self.done, self._keep_alive = status, True, self._parser.should_keep_alive()
