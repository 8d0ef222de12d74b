"""The admin listener and the demo backends answer a bad request as the front door does: a status
that says why, then a close. Before, such a client was closed without a word, or served."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from dispatcher.net.admin import ADMIN_IDLE_TIMEOUT, MAX_ADMIN_BODY
from dispatcher.wiring.demo import LoadReportingBackend
from tests.helpers import (
    Dispatcher,
    exchange,
    one_response,
    parse_responses,
    read_until_close,
    receive_responses,
    settings_for,
    start_backends,
    start_dispatcher,
)

MANY_HEADERS = b"".join(b"x-h%d: v\r\n" % i for i in range(120))
REFUSED = [
    (b"GET /healthz HTTP/1.1\r\n\r\n", 400, b"malformed request"),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400, b"malformed request"),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"malformed request"),
    (
        b"POST /backends HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        400,
        b"malformed",
    ),
    (
        b"POST /backends HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        b"both",
    ),
    (b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505, b"only HTTP/1.0 and HTTP/1.1"),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Long: a\r\n b\r\n\r\n", 400, b"obsolete line folding refused"),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + MANY_HEADERS + b"\r\n", 431, b"too many header fields"),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431, b"too large"),
    (b"GET /" + b"t" * 20_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, b"request target too long"),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400, b"final coding"),
]
IDS = ["no-host", "garbage", "two-hosts", "two-lengths", "length-and-chunked", "http2", "obs-fold"]
IDS += ["120-headers", "20k-header", "20k-target", "te-gzip"]


@pytest.fixture
async def dispatcher(nursery: trio.Nursery) -> Dispatcher:
    backends = await start_backends(nursery, 1.0)
    return await start_dispatcher(nursery, settings_for(backends))


@pytest.mark.parametrize(("request_bytes", "status", "reason"), REFUSED, ids=IDS)
async def test_a_bad_request_to_the_admin_listener_gets_its_status_then_the_close(
    dispatcher: Dispatcher, request_bytes: bytes, status: int, reason: bytes
) -> None:
    """Each fault the front door refuses gets the same status from the admin listener, and a close."""
    response = one_response(await exchange(dispatcher.admin_port, request_bytes))
    assert (response.status, response.closes) == (status, True)
    assert reason in response.body


async def test_a_bad_request_to_a_demo_backend_gets_its_status(nursery: trio.Nursery) -> None:
    """A demo backend (the demo's pool, the tests' backends) answers a bad head too."""
    backend = LoadReportingBackend("demo-x")
    port = await nursery.start(backend.serve)
    response = one_response(await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"))
    assert (response.status, response.closes) == (400, True)
    assert backend.received == []


async def test_a_body_past_the_bound_gets_413_before_it_is_sent(dispatcher: Dispatcher) -> None:
    """A Content-Length past MAX_ADMIN_BODY is refused on its head (nginx's client_max_body_size):
    the client waiting on Expect: 100-continue hears 413 instead of a 100, and sends nothing."""
    head = b"POST /backends HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
    head += b"Content-Length: %d\r\n\r\n" % (MAX_ADMIN_BODY + 1)
    response = one_response(await exchange(dispatcher.admin_port, head))
    assert (response.status, response.closes) == (413, True)


async def test_a_chunked_body_that_outgrows_the_bound_gets_413(dispatcher: Dispatcher) -> None:
    """A chunked body has no length up front: it is refused once it passes the bound, and the answer
    is not lost to a reset though the client's bytes were not all read."""
    chunk = b"%x\r\n%s\r\n" % (40_000, b"c" * 40_000)
    request = b"POST /backends HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
    response = one_response(await exchange(dispatcher.admin_port, request))
    assert (response.status, response.closes) == (413, True)


async def test_a_refused_head_has_no_body(dispatcher: Dispatcher) -> None:
    """RFC 9110 §9.3.2: the answer to HEAD has no body, a refusal's neither."""
    raw = await exchange(dispatcher.admin_port, b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n")
    response = one_response(raw, bodyless=True)
    assert response.status == 400 and raw.endswith(b"\r\n\r\n")


async def test_a_dispatchers_health_check_is_answered_not_refused_as_a_loop(dispatcher: Dispatcher) -> None:
    """The front door refuses X-Dispatcher-Check with 508; the admin listener is where another
    dispatcher's check may rightly land (its /healthz), so it answers it."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(dispatcher.admin_url + "/healthz", headers={"x-dispatcher-check": "1"})
    assert response.status_code == 200


async def test_a_refused_request_after_a_served_one_on_the_same_connection(dispatcher: Dispatcher) -> None:
    """Keep-alive: the first request is served, the pipelined bad one refused, then the close."""
    good = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    raw = await exchange(dispatcher.admin_port, good + b"GET /healthz HTTP/1.1\r\nX: a\r\n b\r\n\r\n")
    stream = await trio.open_tcp_stream("127.0.0.1", dispatcher.admin_port)
    async with stream:
        await stream.send_all(good)
        [kept] = await receive_responses(stream, 1)
    first, second = parse_responses(raw)[0]
    assert (first.status, second.status, second.closes, kept.status) == (200, 400, True, 200)


async def test_a_head_never_ended_gets_408_at_the_idle_timeout(
    dispatcher: Dispatcher, autojump_clock: trio.testing.MockClock
) -> None:
    """A head begun and left gets 408 when the idle timeout ends it (RFC 9110 §15.5.9); a connection
    that sent nothing is closed without a word."""
    started = trio.current_time()
    async with await trio.open_tcp_stream("127.0.0.1", dispatcher.admin_port) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHo")
        [response] = await receive_responses(stream, 1, timeout=ADMIN_IDLE_TIMEOUT * 2)
        assert trio.current_time() == started + ADMIN_IDLE_TIMEOUT
    async with await trio.open_tcp_stream("127.0.0.1", dispatcher.admin_port) as silent:
        assert await read_until_close(silent, timeout=ADMIN_IDLE_TIMEOUT * 2) == b""
    assert (response.status, response.closes) == (408, True)
