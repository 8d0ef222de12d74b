"""Replies as plain data: Location from a backend, path and query from the target, never a host."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.pool import Admin, CheckResult, Pool
from dispatcher.core.reply import REDIRECT_START, DateHeader, Reply, path_and_query, reply_for, serialise
from dispatcher.settings.config import HealthSettings, parse_backend


def up_pool(url: str = "http://10.0.0.1:8080") -> Pool:
    pool = Pool([parse_backend("t", url, "b")], HealthSettings(interval=2.0))
    pool.record_check(pool.backends[0], CheckResult(True, 0.0, load=0.0), now=0.0)
    return pool


def location(target: bytes, url: str = "http://10.0.0.1:8080") -> bytes:
    reply = reply_for(b"GET", target, up_pool(url), lambda: 0.0)
    assert isinstance(reply, bytes) and reply.startswith(REDIRECT_START)
    return reply.removeprefix(REDIRECT_START)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/x?y=1", b"http://10.0.0.1:8080/x?y=1"),
        (b"http://other.example/x?y", b"http://10.0.0.1:8080/x?y"),
        (b"HTTPS://other.example", b"http://10.0.0.1:8080/"),
        (b"http://other.example?q", b"http://10.0.0.1:8080/?q"),
        (b"//evil.example/x", b"http://10.0.0.1:8080//evil.example/x"),
        (b"/\\evil.example", b"http://10.0.0.1:8080/%5Cevil.example"),
        (b"/a%0d%0aSet-Cookie:x", b"http://10.0.0.1:8080/a%0d%0aSet-Cookie:x"),
    ],
)
def test_location_keeps_the_backend_authority(target: bytes, expected: bytes) -> None:
    """Whatever the target, only its path and query follow the backend's scheme://host:port."""
    assert location(target) == expected


def test_path_prefix_is_prepended() -> None:
    """A backend URL with a prefix redirects to prefix + request path."""
    assert location(b"/x?y", "https://h.example:8443/app/") == b"https://h.example:8443/app/x?y"


def refused(method: bytes, target: bytes, pool: Pool, now: float = 0.0) -> Reply:
    reply = reply_for(method, target, pool, lambda: now)
    assert isinstance(reply, Reply)
    return reply


@pytest.mark.parametrize("target", [b"*", b"example.com:443", b"ftp://x/y", b"/caf\xc3\xa9"])
def test_targets_without_a_usable_path_are_refused(target: bytes) -> None:
    """A target with no path to redirect (or not ASCII) is a 400, not a redirect."""
    assert refused(b"GET", target, up_pool()).status == 400


def test_options_star_and_connect_are_answered_here() -> None:
    """OPTIONS * asks about this server (200 with Allow); CONNECT is refused (405)."""
    assert refused(b"OPTIONS", b"*", up_pool()).status == 200
    assert refused(b"CONNECT", b"example.com:443", up_pool()).status == 405


def test_no_backend_gives_503_with_retry_after_until_next_check() -> None:
    """503 + Retry-After = seconds to the next check, rounded up, at least 1."""
    pool = Pool([parse_backend("t", "http://a", "a")], HealthSettings())
    pool.backends[0].next_check_at = 12.2
    reply = refused(b"GET", b"/", pool, 10.0)
    assert (reply.status, dict(reply.headers)[b"retry-after"]) == (503, b"3")
    assert refused(b"GET", b"/", pool, 12.2).headers[-1] == (b"retry-after", b"1")
    assert reply.reason == b"Service Unavailable"


def test_no_retry_after_when_no_check_can_bring_a_backend_back() -> None:
    """An empty pool (routes' named pools only), or one whose every backend an operator put in
    maintenance: no check is due, so a 503 names no time to retry (HAProxy's has none either)."""
    empty = Pool([], HealthSettings())
    assert b"retry-after" not in dict(refused(b"GET", b"/", empty, 10.0).headers)
    pool = Pool([parse_backend("t", "http://a", "a")], HealthSettings())
    pool.set_admin(pool.backends[0], Admin.MAINT)
    reply = refused(b"GET", b"/", pool, 10.0)
    assert reply.status == 503 and b"retry-after" not in dict(reply.headers)


def test_redirect_tails_finish_a_valid_response() -> None:
    """A redirect is the start from reply_for plus a tail: a complete HTTP/1.1 307, with or without close."""
    keep, close, kept = DateHeader().tails(784111777.0)
    start = reply_for(b"GET", b"/x", up_pool(), lambda: 0.0)
    assert isinstance(start, bytes)
    assert start + keep == (
        b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://10.0.0.1:8080/x\r\n"
        b"content-length: 0\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
    )
    assert close.endswith(b"\r\nconnection: close\r\n\r\n")
    assert kept.endswith(b"\r\nconnection: keep-alive\r\n\r\n")  # to an HTTP/1.0 keep-alive


def test_serialise_omits_the_body_for_head() -> None:
    """serialise writes status, headers, Date and Connection; HEAD gets no body."""
    reply = Reply(503, [(b"content-length", b"3")], b"no\n")
    assert serialise(reply, b"D", close=True) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\ndate: D\r\nconnection: close\r\n\r\nno\n"
    )
    assert serialise(reply, b"D", close=False, head=True).endswith(b"date: D\r\n\r\n")


def test_date_header_is_cached_per_second() -> None:
    """The Date value is computed once a second and is an IMF-fixdate."""
    date = DateHeader()
    first = date.at(784111777.2)
    assert first == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert date.at(784111777.9) is first
    assert date.at(784111778.0) != first


@given(st.binary(min_size=1, max_size=200))
def test_any_origin_target_keeps_the_authority(tail: bytes) -> None:
    """For any ASCII origin-form target the Location starts with the backend's base and a '/'."""
    target = b"/" + bytes(c for c in tail if 0x21 <= c < 0x7F)
    # What no URI may hold is percent-encoded, the rest kept as it came.
    encoded = b"".join(b"%%%02X" % c if c in b'"#<>\\^`{|}' else bytes((c,)) for c in target)
    encoded = re.sub(rb"%(?![0-9A-Fa-f]{2})", b"%25", encoded)  # and a `%` that begins no escape
    assert path_and_query(target) == encoded
    assert location(target).startswith(b"http://10.0.0.1:8080/")
