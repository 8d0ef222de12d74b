"""Request to reply: what the front door answers, as plain data.

Owns: the redirect (307 + Location), the 503 when nothing is usable, the answers that are not
redirects (OPTIONS *, CONNECT, bad targets) and the cached Date header.
Rules: sans-IO: no trio, no sockets. It asks the pool for a backend and nothing else.

The Location's scheme, host and port always come from a configured backend: the request target only
ever contributes a path and query, so no target (absolute form, `//host`, backslashes, encoded CR/LF)
can send a client elsewhere. h11 has already refused targets with control characters or spaces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from dispatcher.pool import Pool

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
_ZERO = (b"content-length", b"0")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class DateHeader:
    """RFC 9110 §6.6.1: an origin with a clock sends Date. Formatted once a second, not per request."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def at(self, wall_time: float) -> bytes:
        second = int(wall_time)
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode()
        return self._value


def path_and_query(target: bytes) -> bytes | None:
    """The path and query of an origin-form or absolute-form target; None when it has neither."""
    if target.startswith(b"/"):
        path = target
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        path = rest[cut:]
        path = path if path.startswith(b"/") else b"/" + path
    if not path.isascii():
        return None
    return path


def text_reply(status: int, message: str, extra: Headers | None = None, close: bool = True) -> Reply:
    """A short text answer; errors close the connection (hypercorn's and HAProxy's habit)."""
    body = (message + "\n").encode()
    headers = [_TEXT, (b"content-length", str(len(body)).encode()), *(extra or [])]
    return Reply(status, headers, body, close)


def reply_for(method: bytes, target: bytes, pool: Pool, clock: Callable[[], float]) -> Reply:
    """The answer to one request head; counts a redirect in the pool when it makes one.

    `clock` (trio.current_time in the server) is read only for a 503, off the redirect's path.
    """
    path = path_and_query(target)
    if path is None or method == b"CONNECT":
        return _not_redirected(method, target)
    backend = pool.choose()
    if backend is None:
        return unavailable(pool, clock())
    return Reply(307, [(b"location", backend.location_base + path), _ZERO])


ALLOWED = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def _not_redirected(method: bytes, target: bytes) -> Reply:
    if method == b"CONNECT":
        message = "CONNECT is not supported: this is a redirector, not a tunnel"
        return text_reply(405, message, [(b"allow", ALLOWED)])
    if method == b"OPTIONS" and target == b"*":
        # RFC 9110 §9.3.7: `OPTIONS *` asks about the server itself; redirecting it means nothing.
        return Reply(200, [(b"allow", ALLOWED), _ZERO])
    return text_reply(400, "bad request target")


def unavailable(pool: Pool, now: float) -> Reply:
    """503 with Retry-After: the seconds until the next health check, at least 1 (RFC 9110 §10.2.3)."""
    retry = max(1, math.ceil(pool.next_check_in(now)))
    return text_reply(503, "no healthy backend", [(b"retry-after", str(retry).encode())], close=False)
