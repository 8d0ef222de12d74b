"""Request to reply: what the front door answers, as plain data.

Owns: the redirect (307 + Location), the 503 when nothing is usable, the answers that are not
redirects (OPTIONS *, CONNECT, bad targets), the screening of a request head (limits, smuggling
ambiguities, a looped-back check) and the cached Date header.
Rules: sans-IO: no trio, no sockets, no parsing (protocol.conversation hands it h11's events). Of the
pool it asks two things: a backend (`choose`, which counts the redirect) and, for a 503's
Retry-After, when the next check is due.

The Location's scheme, host and port always come from a configured backend: the request target only
ever contributes a path and query, so no target (absolute form, `//host`, backslashes, encoded CR/LF)
can send a client elsewhere. h11 has already refused targets with control characters or spaces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from dispatcher.core.pool import Pool

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response: status, headers (without Date and Connection), body, and whether to close."""

    status: int
    headers: Headers
    body: bytes = b""
    close: bool = False

    @property
    def reason(self) -> bytes:
        # Some parsers (llhttp: Node, h2load) fail on an empty reason phrase: always send the standard one.
        return REASONS[self.status]


REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# RFC 9110 renamed these; Python's http module keeps the RFC 7231 phrases.
REASONS |= {413: b"Content Too Large", 414: b"URI Too Long"}
# nginx's large_client_header_buffers (8k) bounds a request line; a longer target gets 414.
MAX_TARGET = 8 * 1024
# HAProxy's tune.http.maxhdr is 101 header lines; more is a 431 (RFC 6585 §5).
MAX_HEADERS = 100
# Health checks carry this header. A front door that receives one is itself configured as a backend
# (of this dispatcher or of another): redirecting the check would make a loop, so it gets 508.
CHECK_HEADER = b"x-dispatcher-check"
_ZERO = (b"content-length", b"0")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


REDIRECT_START = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: "

# Bytes h11 lets through in a request target (any visible ASCII) that no URI may hold (RFC 3986 §2):
# a Location repeating them would not be a URI-reference (RFC 9110 §10.2.2). `#` is one too: a request
# target has no fragment (RFC 9112 §3.2), so a `#` received is data, not a fragment for the client to
# keep. They are percent-encoded into the Location (RFC 3986 §2.1), as browsers encode them in a path
# (the WHATWG URL path percent-encode set). `[` and `]`, which browsers send raw in a query, are kept.
_NOT_IN_URI = b'"#<>\\^`{|}'
_URI_SAFE = bytes(c for c in range(0x21, 0x7F) if c not in _NOT_IN_URI)
# A `%` that begins no percent-encoding (RFC 3986 §2.1: `%` and two hex digits): as data, `%25`.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# A Host field's value: a reg-name, an IPv4 address or an IP literal in brackets, and a port (RFC 9110
# §7.2, RFC 3986 §3.2.2). Any other byte makes the field invalid: 400 (RFC 9112 §3.2).
_HOST_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:[]%"
# An authority (RFC 3986 §3.2.2, RFC 9110 §4.2.1): a host, never empty (a reg-name, an IPv4 address,
# or an IPv6 or future literal in brackets), and a port of digits, maybe empty (RFC 3986 §3.2.3). An
# absolute-form target's (userinfo is refused apart, RFC 9110 §4.2.4), and a Host field's with a port or
# a bracket (RFC 9112 §3.2): `Host: :80` and `Host: [zz]` are 400, as nginx refuses an empty host.
AUTHORITY = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[0-9A-Za-z._~!$&'()*+,;=:-]+)\]"
    rb"|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(?::[0-9]*)?"
)


class DateHeader:
    """RFC 9110 §6.6.1: an origin with a clock sends Date. Formatted once a second, not per request.

    `tails` are the ends of a redirect after its Location (content-length, date, blank line), with
    and without `connection: close`: built once a second, so a redirect is one join of four pieces.
    """

    def __init__(self) -> None:
        self._second = -1
        self._value = b""
        self._tails: tuple[bytes, ...] = (b"", b"", b"")

    def at(self, wall_time: float) -> bytes:
        second = int(wall_time)
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode()
            start = b"\r\ncontent-length: 0\r\ndate: " + self._value
            self._tails = (
                start + b"\r\n\r\n",
                start + b"\r\nconnection: close\r\n\r\n",
                start + b"\r\nconnection: keep-alive\r\n\r\n",
            )
        return self._value

    def tails(self, wall_time: float) -> tuple[bytes, ...]:
        """The tails of a redirect at this wall time, by `Connection`: (none, close, keep-alive)."""
        self.at(wall_time)
        return self._tails


def serialise(reply: Reply, date: bytes, close: bool, head: bool = False, kept_1_0: bool = False) -> bytes:
    """Any reply as HTTP/1.1 bytes; HEAD gets the headers without the body (RFC 9110 §9.3.2).
    `kept_1_0`: an HTTP/1.0 client asked to keep the connection, and is told it is kept (RFC 9112
    §9.3: without `Connection: keep-alive` a 1.0 client closes)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reply.reason)]
    lines += [name + b": " + value + b"\r\n" for name, value in reply.headers]
    lines.append(b"date: " + date + b"\r\n")
    if close:
        lines.append(b"connection: close\r\n")
    elif kept_1_0:
        lines.append(b"connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(reply.body)
    return b"".join(lines)


def path_and_query(target: bytes) -> bytes | None:
    """The path and query of an origin-form or absolute-form target, with what no URI may hold
    percent-encoded; None when it has neither."""
    if target.startswith(b"/"):
        path = target
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        path = rest[cut:]
        path = path if path.startswith(b"/") else b"/" + path
    unsafe = path.translate(None, _URI_SAFE)
    if unsafe:  # rare: one pass deletes every safe byte, so a plain path costs that pass only
        if unsafe.translate(None, _NOT_IN_URI):
            return None  # a space, a control or a non-ASCII byte: not a target at all
        path = b"".join(b"%%%02X" % byte if byte in _NOT_IN_URI else bytes((byte,)) for byte in path)
    if b"%" in path and _BAD_ESCAPE.search(path):  # `%zz`, a `%` at the end: the `%` itself, encoded
        return _BAD_ESCAPE.sub(b"%25", path)
    return path


def field_items(headers: Sequence[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes, bytes]]:
    """The head's fields as (raw name, lower-case name, value), for a loop over them on every request.

    h11's `Headers` is a Sequence without an `__iter__` of its own: a loop over it calls Python's
    `__getitem__` once a field and ends in an IndexError, 1.9 us for four fields against 0.45 us over
    the list it keeps (`_full_items`, the same triples). That list is read when it is there; any other
    sequence of (name, value) pairs (a test's, a later h11's) is walked as it is."""
    full: Iterable[tuple[bytes, bytes, bytes]] | None = getattr(headers, "_full_items", None)
    return full if full is not None else [(name, name, value) for name, value in headers]


def head_size(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> int:
    """The size of a parsed request head, to within the white space h11 strips."""
    return len(method) + len(target) + 12 + sum(len(name) + len(value) + 4 for name, value in headers)


def folded(chunk: bytes, mid_head: bool) -> bool:
    """Whether the head in this chunk has an obs-fold line (RFC 9112 §5.2): we refuse it with 400.

    h11 would unfold it into a space, which the RFC allows; but a front door that reads a header
    differently from the server behind it is how request smuggling starts, so we refuse instead.
    Only the first head of a chunk is scanned: cheap on the hot path (two C-level finds).
    """
    end = chunk.find(b"\r\n\r\n")
    head = chunk if end < 0 else chunk[:end]
    return b"\n " in head or b"\n\t" in head or (mid_head and chunk[:1] in (b" ", b"\t"))


def text_reply(status: int, message: str, extra: Headers | None = None, close: bool = True) -> Reply:
    """A short text answer; errors close the connection (hypercorn's and HAProxy's habit)."""
    body = (message + "\n").encode()
    headers = [_TEXT, (b"content-length", str(len(body)).encode()), *(extra or [])]
    return Reply(status, headers, body, close)


def reply_for(method: bytes, target: bytes, pool: Pool, clock: Callable[[], float]) -> Reply | bytes:
    """The answer to one request head; counts a redirect in the pool when it makes one.

    A redirect comes back as bytes: its status line and Location, to be finished with one of
    `DateHeader.tails`; anything else as a Reply. `clock` (trio.current_time in the server) is read
    once: the choice's estimate drains with time (dispatcher.core.estimate), and a 503 says when to retry.
    """
    path = path_and_query(target)
    if path is None or method == b"CONNECT":
        return not_redirected(method, target)
    now = clock()
    backend = pool.choose(now) if not pool.maintenance else None
    if backend is None:
        return fallback(pool, path, now)
    return REDIRECT_START + backend.location_base + path


def redirect_in(
    pool: Pool, path: bytes, hash_key: bytes | None, now: float, asked: bytes | None = None
) -> Reply | bytes:
    """A redirect to a backend of `pool` (a route's) with `path` (as the route rewrote it), or the
    pool's fallback, which keeps the path `asked` (the request's own: a maintenance site knows nothing
    of the route's rewriting); as `reply_for`."""
    backend = None if pool.maintenance else pool.choose(now, hash_key)
    if backend is None:
        return fallback(pool, path if asked is None else asked, now)
    return REDIRECT_START + backend.location_base + path


def fallback(pool: Pool, path: bytes, now: float) -> Reply | bytes:
    """What a pool answers with no usable backend, or in maintenance (settings.routing.Fallback):
    503 + Retry-After, a 307 to the fallback URL, or the fixed page, framed as every other answer."""
    pool.fallbacks += 1
    spec = pool.fallback
    if spec.redirect is not None:
        base = spec.redirect.encode("ascii")
        if not spec.keep_path:
            return REDIRECT_START + base
        return REDIRECT_START + base.rstrip(b"/") + path
    if spec.body is not None:
        headers = [
            (b"content-type", spec.content_type.encode()),
            (b"content-length", str(len(spec.body)).encode()),
        ]
        if spec.status == 503 and not pool.maintenance:
            headers += _retry_after(pool, now)
        elif spec.status == 503 and spec.retry_after is not None:
            headers.append((b"retry-after", str(spec.retry_after).encode()))
        return Reply(spec.status, headers, spec.body)
    if pool.maintenance:
        window = [(b"retry-after", str(spec.retry_after).encode())] if spec.retry_after is not None else []
        return text_reply(503, "in maintenance", window, close=False)
    return unavailable(pool, now)


ALLOWED = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def screen(
    version: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    max_discard: int,
    loops: bool = True,
) -> tuple[Reply | None, bool]:
    """Refuse what must not be redirected; else say whether the connection must close after the answer.

    One pass over the headers, on every request: the limits (414, 431), request smuggling
    ambiguities (Content-Length with Transfer-Encoding: RFC 9112 §6.1, 400 and close; h11 already
    refuses conflicting Content-Lengths and unknown codings), a health check that looped back, and
    what ends the connection: `Connection: close`, HTTP/1.0 (h11 keeps no 1.0 connection alive), or a
    body larger than we are willing to read and drop. `loops`: refuse a health check (508); false
    where one is expected (the admin listener, the demo backends).
    """
    if version != b"1.1" and version != b"1.0":
        # h11 parses any HTTP/d.d request line; only 1.x is ours to answer (RFC 9110 §15.6.6).
        return text_reply(505, "only HTTP/1.0 and HTTP/1.1 are served here"), False
    if len(target) > MAX_TARGET:
        return text_reply(414, "request target too long"), False
    if len(headers) > MAX_HEADERS:
        return text_reply(431, "too many header fields"), False
    length = -1
    chunked = False
    hosts = 0
    old = version == b"1.0"
    close = old
    for _, name, value in field_items(headers):
        if name == b"host":
            hosts += 1
            if (
                value.translate(None, _HOST_SAFE)
                or hosts > 1
                or ((b":" in value or b"[" in value or b"]" in value) and AUTHORITY.fullmatch(value) is None)
            ):
                return text_reply(400, "invalid or repeated Host (RFC 9112 3.2)"), False
        elif name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"connection":
            options = value.lower()
            if b"close" in options:
                close = True
            elif old and b"keep-alive" in options:
                close = False  # an HTTP/1.0 persistent connection (RFC 9112 §9.3, appendix C.2.2)
        elif name == CHECK_HEADER and loops:
            return text_reply(508, "loop detected: a health check reached a dispatcher's front door"), False
    if chunked and length >= 0:
        return text_reply(400, "both Content-Length and Transfer-Encoding: refused (RFC 9112 6.1)"), False
    if chunked and old:  # RFC 9112 §6.1: Transfer-Encoding before HTTP/1.1 MUST be taken as faulty framing
        return text_reply(400, "Transfer-Encoding in an HTTP/1.0 request: refused (RFC 9112 6.1)"), False
    # A chunked body's size is not known when the 307 goes out (with its head): it may outgrow what we
    # read and drop, so the 307 says `Connection: close` rather than close without a word mid-body.
    return None, close or chunked or length > max_discard


def not_redirected(method: bytes, target: bytes) -> Reply:
    """The answers to a request that has no path to redirect: CONNECT, OPTIONS *, a bad target."""
    if method == b"CONNECT":
        message = "CONNECT is not supported: this is a redirector, not a tunnel"
        return text_reply(405, message, [(b"allow", ALLOWED)])
    if method == b"OPTIONS" and target == b"*":
        # RFC 9110 §9.3.7: `OPTIONS *` asks about the server itself; redirecting it means nothing.
        return Reply(200, [(b"allow", ALLOWED), _ZERO])
    return text_reply(400, "bad request target")


def unavailable(pool: Pool, now: float) -> Reply:
    """503 with Retry-After: the seconds until the next health check, at least 1 (RFC 9110 §10.2.3)."""
    return text_reply(503, "no healthy backend", _retry_after(pool, now), close=False)


def _retry_after(pool: Pool, now: float) -> list[tuple[bytes, bytes]]:
    """Retry-After as the next check's time; none when no backend is checked (an empty pool, or all
    in maintenance), as HAProxy's 503 with no server has none: only an operator changes that."""
    wait = pool.next_check_in(now)
    return [] if wait is None else [(b"retry-after", str(max(1, math.ceil(wait))).encode())]
